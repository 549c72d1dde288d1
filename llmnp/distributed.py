"""Data-parallel training over processes: one process per GPU (or several on the CPU), as llm.c does.

Each process holds a full model replica and reads its own B*T slice of every step's batch (data.py);
after backward, the gradients are averaged across processes, so every replica takes the same AdamW
step and the weights stay identical.

  one process:      nothing to do; MPI is not even imported
  CPU processes:    MPI Allreduce on the NumPy gradient buffer (mpi4py)
  GPU processes:    NCCL all-reduce on the device buffer (cupy.cuda.nccl), the NCCL id broadcast over MPI;
                    where NCCL cannot be used (no NCCL, or several processes sharing one GPU, which NCCL
                    refuses), the buffers are staged through the host and reduced with MPI
  ZeRO-1 (-z 1):    process r owns slice r of the flat parameter buffer: gradients are reduce-scattered,
                    each process runs AdamW on its slice only (AdamW's m and v are 1/N the size), and the
                    updated slices are all-gathered back into every replica.

Launch: `mpiexec -n N python train_gpt2.py ...` (a hostfile / --host for several machines). Only rank 0
prints and writes logs. Not here: tensor or pipeline parallelism, ZeRO-2/3.
"""
import os

import numpy as np

from llmnp.errors import UserError

# (world size, rank) environment variables that MPI launchers set for every process they start
_LAUNCHER_VARS = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                  ("PMIX_SIZE", "PMIX_RANK"))


def launcher_rank_size():
    """(rank, world size) as the launcher that started this process set them; (0, 1) without one.
    Read before MPI is initialised (and without it, e.g. to label an error line)."""
    for size_var, rank_var in _LAUNCHER_VARS:
        size = os.environ.get(size_var, "")
        if size.isdigit():
            rank = os.environ.get(rank_var, "0")
            return (int(rank) if rank.isdigit() else 0), int(size)
    return 0, 1


def launched_by_mpi():
    return launcher_rank_size()[1] > 1


class Distributed:
    def __init__(self, device="cpu"):
        self.device = device
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.comm = None            # MPI communicator
        self.nccl = None            # NCCL communicator (GPU, one process per GPU)
        self.shard = None           # (start, end) of the flat buffer this process updates under ZeRO-1
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:
                raise UserError("launched by mpiexec but mpi4py is missing: pip install -e '.[mpi]'") from None
            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
            self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        if device == "cuda":
            self._setup_gpu()

    def _setup_gpu(self):
        from llmnp.cuda.runtime import cupy as find_cupy
        cupy = find_cupy()                      # UserError (one line) where there is no GPU or no CuPy
        num_gpus = cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(self.local_rank % num_gpus).use()       # before any allocation
        if self.world_size == 1:
            return
        procs_per_node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()
        try:
            from cupy.cuda import nccl
        except ImportError:
            nccl = None
        if nccl is not None and procs_per_node <= num_gpus:
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            self.nccl = nccl.NcclCommunicator(self.world_size, uid, self.rank)
            self._nccl_mod = nccl
        elif self.rank == 0:
            print(f"{procs_per_node} processes share {num_gpus} GPU(s): reducing gradients through the host")

    # ------------------------------------------------------------------ scalars (logging)
    def average(self, x):
        """Mean of a Python float over processes."""
        return x if self.comm is None else self.comm.allreduce(x) / self.world_size

    def sum(self, x):
        return x if self.comm is None else self.comm.allreduce(x)

    def any(self, flag):
        """Whether flag is true on any process (a stop request one process received, say)."""
        return bool(flag) if self.comm is None else bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    # -------------------------------------------------------------------------- gradients
    def setup_zero(self, model, stage):
        """ZeRO-1: pick this process's slice of the flat buffer (before the first update)."""
        if stage == 0 or self.world_size == 1:
            return
        n = model.num_parameters
        if n % self.world_size != 0:
            if self.rank == 0:
                print(f"-z 1: {n} parameters do not split evenly over {self.world_size} processes; using ZeRO-0")
            return
        size = n // self.world_size
        self.shard = (self.rank * size, (self.rank + 1) * size)
        if self.rank == 0:
            mib = lambda count: count * 4 * 2 / 2**20           # noqa: E731  m and v, float32
            print(f"ZeRO-1: each process keeps AdamW's m and v for {size:,} of {n:,} parameters "
                  f"({mib(size):,.1f} MiB instead of {mib(n):,.1f} MiB)")
        self._shard_grads = model.xp.empty(size, dtype=model.grads_memory.dtype if model.grads_memory is not None
                                           else model.params_memory.dtype)   # (n / world_size,)

    def reduce_gradients(self, model):
        """Average model.grads_memory over processes (all of it, or under ZeRO-1 this process's slice)."""
        if self.world_size == 1:
            return
        g = model.grads_memory                                   # (num_parameters,)
        if self.shard is None:
            self._allreduce(g)
            g /= self.world_size
        else:
            start, end = self.shard
            self._reduce_scatter(g, self._shard_grads)
            g[start:end] = self._shard_grads / self.world_size

    def grad_norm(self, model):
        """The global gradient norm, the same number on every process."""
        if self.shard is None:
            return model.grad_norm()
        return float(np.sqrt(self.sum(model.grad_norm(shard=self.shard))))

    def gather_master_weights(self, model):
        """ZeRO-1 with bf16 parameters: a process's fp32 master weights are current only in its own slice
        (the all-gather after each step moves the bf16 parameters); gather them before they are saved."""
        if self.shard is not None and model.master_memory is not None:
            self._allgather(model.master_memory)

    def after_update(self, model):
        """ZeRO-1: gather every process's updated slice into the full parameter buffer."""
        if self.shard is not None:
            self._allgather(model.params_memory)

    # ------------------------------------------------------------------------ collectives
    def _stream(self):
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def _nccl_dtype(self, a):
        return {np.dtype(np.float32): self._nccl_mod.NCCL_FLOAT32,
                np.dtype(np.float64): self._nccl_mod.NCCL_FLOAT64}.get(a.dtype, getattr(self._nccl_mod, "NCCL_BFLOAT16", None))

    def _host(self, a):
        """A float32/64 host copy of a device array (bf16 is widened to float32 on the GPU first)."""
        if isinstance(a, np.ndarray):
            return a
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        return a.get()

    def _allreduce(self, a):
        if self.nccl is not None:
            self.nccl.allReduce(a.data.ptr, a.data.ptr, a.size, self._nccl_dtype(a), self._nccl_mod.NCCL_SUM, self._stream())
        elif isinstance(a, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        else:
            h = self._host(a)
            self.comm.Allreduce(self.MPI.IN_PLACE, h, op=self.MPI.SUM)
            _to_device(a, h)

    def _reduce_scatter(self, full, out):
        if self.nccl is not None:
            self.nccl.reduceScatter(full.data.ptr, out.data.ptr, out.size, self._nccl_dtype(full),
                                    self._nccl_mod.NCCL_SUM, self._stream())
        elif isinstance(full, np.ndarray):
            self.comm.Reduce_scatter_block(full, out, op=self.MPI.SUM)
        else:
            h_out = np.empty(out.size, dtype=np.float32 if out.dtype not in (np.float32, np.float64) else out.dtype)
            self.comm.Reduce_scatter_block(self._host(full), h_out, op=self.MPI.SUM)
            _to_device(out, h_out)

    def _allgather(self, a):
        if self.nccl is not None:
            start, end = self.shard
            self.nccl.allGather(a[start:end].data.ptr, a.data.ptr, end - start, self._nccl_dtype(a), self._stream())
        elif isinstance(a, np.ndarray):
            self.comm.Allgather(self.MPI.IN_PLACE, a)
        else:
            h = self._host(a)
            self.comm.Allgather(self.MPI.IN_PLACE, h)
            _to_device(a, h)

    def finish(self):
        self.barrier()


def _to_device(dst, host):
    """Copy a host array into a CuPy array (converting the dtype on the GPU)."""
    import cupy
    dst[...] = cupy.asarray(host)
