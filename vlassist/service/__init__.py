"""Front-end-neutral answering: requests, the queue, and recording answers."""
