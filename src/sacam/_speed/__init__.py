"""sacam's speed machinery (private): how the many forward passes of a call are run.

- :mod:`~sacam._speed.tuner`: the one tuner, which picks the inputs per pass and the
  memory format of a loop's passes by timing the loop's own first chunks;
- :mod:`~sacam._speed.memory`: memory budgets and the measured memory cost of a pass,
  which cap how many inputs a pass may hold;
- :mod:`~sacam._speed.store`: the plan store, tuned plans and measured costs kept on disk;
- :mod:`~sacam._speed.allocator`: glibc's handling of freed memory
  (:func:`sacam.keep_freed_memory`).

docs/performance.md describes what each costs and saves.
"""
