"""Data-parallel training over MPI: the runtime behind ``keras.distribution.DataParallel``.

Every rank (process of ``mpirun -n N python train.py``) runs the same script and the same
compiled step on its shard of each global batch. The step is split at its one all-reduce
(ops/collective.py, passes/memory_plan.py): forward and backward in one native call, then
one ``MPI_Allreduce`` (sum) in place over the arena region that holds every scaled gradient,
the increments of the stateful metrics' state, and a few float32 slots for each rank's step
status, its sample count and its loss and metric sums, then the optimizer's update (and the
stateful metrics' results) in a second native call. The test step is split the same way.
Each rank scales its gradients by its share of the global batch (n_rank / n_global), so
their sum is the gradient of the global batch's mean loss whatever the shard sizes. A status
set on any rank stops every rank before the update, so that no weight changes anywhere.

mpi.py holds the communicator (mpi4py, imported lazily), step.py the per-step collective,
sharding.py which samples and batches each rank takes.
"""
