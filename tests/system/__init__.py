"""The whole pipeline end to end: the fault suite, the demo, history on a first start."""
