"""Extra links from task instances to the batches they created."""
