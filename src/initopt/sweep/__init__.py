"""Jobs to trained run directories, by phase: :mod:`~initopt.sweep.plan` (each job's members and
where they start), :mod:`~initopt.sweep.grouping` (training groups), :mod:`~initopt.sweep.runner`
(a group through the engine, the sweep loop) and :mod:`~initopt.sweep.outputs` (what a job leaves);
:mod:`~initopt.sweep.shards` runs groups in submitit jobs (the sharded launcher).

Single runs (``initopt.train``) and the population launcher go through the same phases.
"""
