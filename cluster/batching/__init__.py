"""Dynamic batching: pure merge/split/pad functions and the asyncio batch queue of a replica."""
