"""Process-level tuning done by `hj212gw serve` once it has started."""

import gc

from hj212gw.cli.serve import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # modules, classes, settings: all of start-up
        assert gc.isenabled()  # cycles are still collected, less often
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
