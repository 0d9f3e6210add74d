"""The run folder, one contract: what a run writes and where (:mod:`.paths`), the one writer
(:mod:`.writer`), the reader that ``tsdyn.report`` and notebooks use (:mod:`.reader`), whether and
how a run in it can continue (:mod:`.state`) and the lock that keeps two live processes out of one
folder (:mod:`.lock`). Submodules are imported by name (``from tsdyn.runfolder.reader import
find_runs``): this file imports nothing, so the package never takes part in an import cycle."""
