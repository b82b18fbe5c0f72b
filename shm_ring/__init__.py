"""Lock-free single-producer/single-consumer packet rings in shared memory."""
