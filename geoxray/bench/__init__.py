"""What GeoX-Bench is: the task table, prompts, the authors index format, schemas."""
