"""The ground floor, which every other package may use and which uses none of them: the
error type, the layer-type registry, the architecture record, the hook contract and event
store, distributed helpers, checkpoint I/O, counting, runtimes and timing, graph capture,
and building config nodes."""
