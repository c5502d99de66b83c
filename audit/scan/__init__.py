"""The scan, in the order it runs: `options` -> `run` (the loop) -> `pending` (which samples) -> an engine
(`local`, or `ray_engine` with its `ray_tasks`) -> `kernel` (a batch -> fields) -> `evidence` (what is
measured) -> `second_phase` (the head's verdicts, the neighbours). Kept empty so that `ray_tasks` loads
without torch or FiftyOne."""
