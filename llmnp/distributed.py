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

from llmnp.errors import UserError, launcher_rank_size

class Launch:
    """How processes started without mpiexec find each other (llm.c's -pn -pr -pg -pi -pf -ps): each is
    told the process count, its rank and the GPUs per machine; process 0 makes the NCCL id and hands it
    over a shared folder (fs) or a TCP connection to its address (tcp)."""

    def __init__(self, num_processes=1, rank=0, gpus_per_node=8, method="mpi", folder=None, server=None):
        self.num_processes, self.rank, self.gpus_per_node = num_processes, rank, gpus_per_node
        self.method, self.folder, self.server = method, folder, server
        if not 0 <= rank < num_processes:
            raise UserError(f"-pr {rank} is not a rank of -pn {num_processes} processes (0..{num_processes - 1})")
        if method == "fs" and not folder:
            raise UserError("-pi fs needs -pf FOLDER, a folder every process can read")
        if method == "tcp" and not server:
            raise UserError("-pi tcp needs -ps ADDRESS, the address of process 0")


NCCL_ID_FILE = "ncclUniqueId.sync"
NCCL_ID_PORT = 12345                            # llm.c's port for the tcp exchange
EXCHANGE_TIMEOUT_S = 300


class Distributed:
    def __init__(self, device="cpu", launch=None):
        self.device = device
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.comm = None            # MPI communicator
        self.nccl = None            # NCCL communicator (GPU, one process per GPU)
        self.zero = False           # ZeRO-1: each process updates its model.shard of the flat buffer
        self.launch = launch if launch is not None and launch.method != "mpi" else None
        if self.launch is not None:
            if device != "cuda":
                raise UserError(f"-pi {launch.method}: processes started without mpiexec reduce through NCCL, "
                                f"which needs --device cuda; on the CPU start them with mpiexec -n N")
            self.rank, self.world_size = launch.rank, launch.num_processes
            self.local_rank = launch.rank % launch.gpus_per_node
        elif launcher_rank_size()[1] > 1:            # started by mpiexec
            try:
                from mpi4py import MPI
            except ImportError:
                raise UserError("launched by mpiexec but mpi4py is missing: pip install -e '.[mpi]'") from None
            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
            self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        if launch is not None and launch.num_processes != self.world_size:
            raise UserError(f"-pn {launch.num_processes}, but {self.world_size} process(es) were started: "
                            + ("start them with mpiexec -n N, or give -pi tcp/fs" if self.comm is None else
                               "give -pn the count mpiexec starts (or leave -pn out)"))
        if device == "cuda":
            self._setup_gpu()

    def describe(self):
        """One line on how gradients are reduced, for the start of a run (None for one process)."""
        if self.world_size == 1:
            return None
        how = ("NCCL all-reduce on the GPUs" if self.nccl is not None else
               "MPI through the host (NCCL needs one GPU per process): slower" if self.device == "cuda" else "MPI")
        started = f"started with -pi {self.launch.method}" if self.launch else "started by mpiexec"
        return f"{self.world_size} processes ({started}), gradients reduced by {how}"

    def _setup_gpu(self):
        from llmnp.cuda.runtime import cupy as find_cupy
        cupy = find_cupy()                      # UserError (one line) where there is no GPU or no CuPy
        num_gpus = cupy.cuda.runtime.getDeviceCount()
        if self.launch is not None and self.local_rank >= num_gpus:
            raise UserError(f"-pr {self.rank} with -pg {self.launch.gpus_per_node} wants GPU {self.local_rank}, "
                            f"this machine has {num_gpus}: give -pg {num_gpus}")
        cupy.cuda.Device(self.local_rank % num_gpus).use()       # before any allocation
        if self.world_size == 1:
            return
        try:
            from cupy.cuda import nccl
        except ImportError:
            nccl = None
        if self.launch is not None:
            if nccl is None:
                raise UserError("processes started without mpiexec need NCCL, and CuPy has none here")
            uid = self._exchange_nccl_id(nccl)
        else:
            procs_per_node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()
            if nccl is None or procs_per_node > num_gpus:
                return                              # host-staged MPI reduction (describe() says so)
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl = nccl.NcclCommunicator(self.world_size, uid, self.rank)
        self._nccl_mod = nccl

    def _exchange_nccl_id(self, nccl):
        """Process 0's NCCL id, handed to the others through -pf's folder or a TCP connection."""
        import socket
        import time
        launch = self.launch
        if launch.method == "fs":
            path = os.path.join(launch.folder, NCCL_ID_FILE)
            if self.rank == 0:
                from llmnp.fileio import write_atomic
                uid = nccl.get_unique_id()
                write_atomic(path, bytes(uid).hex().encode())
                return uid
            started = time.time()
            while time.time() - started < EXCHANGE_TIMEOUT_S:
                # an id file left by an earlier run is older than this process
                if os.path.exists(path) and os.path.getmtime(path) >= started - 60:
                    with open(path) as f:
                        return bytes.fromhex(f.read())
                time.sleep(1)
            raise UserError(f"no NCCL id from process 0 in {path} after {EXCHANGE_TIMEOUT_S} s: is -pf the "
                            f"same folder for every process, and is process 0 running?")
        if self.rank == 0:
            uid = nccl.get_unique_id()
            blob = bytes(uid)
            try:
                with socket.create_server((launch.server, NCCL_ID_PORT)) as server:
                    server.settimeout(EXCHANGE_TIMEOUT_S)
                    for _ in range(self.world_size - 1):
                        conn, _ = server.accept()
                        with conn:
                            conn.sendall(blob)
            except OSError as e:
                raise UserError(f"-ps {launch.server}: process 0 cannot serve the NCCL id on port "
                                f"{NCCL_ID_PORT} ({e.strerror or e})") from None
            return uid
        started = time.time()
        while True:
            try:
                with socket.create_connection((launch.server, NCCL_ID_PORT), timeout=10) as conn:
                    data = b""
                    while chunk := conn.recv(4096):
                        data += chunk
                return data
            except OSError:
                if time.time() - started > EXCHANGE_TIMEOUT_S:
                    raise UserError(f"-ps {launch.server}: no NCCL id from process 0 on port {NCCL_ID_PORT} "
                                    f"after {EXCHANGE_TIMEOUT_S} s: is process 0 running there?") from None
                time.sleep(1)

    # ------------------------------------------------------------------ scalars (logging)
    def average(self, x):
        """Mean of a Python float over processes."""
        return self.sum(x) / self.world_size

    def sum(self, x):
        """Sum over processes of a number or a NumPy array (counts, a shard's sum of squares)."""
        return self._host_reduce(x, "sum")

    def any(self, flag):
        """Whether flag is true on any process (a stop request one process received, say)."""
        return bool(self._host_reduce(int(bool(flag)), "max"))

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()
        elif self.world_size > 1:
            self._host_reduce(0, "sum")          # NCCL only: a reduction every process must reach

    def _host_reduce(self, x, op):
        """A reduction of host values: MPI where the processes have it, else NCCL on a small device array."""
        if self.world_size == 1:
            return x
        if self.comm is not None:
            return self.comm.allreduce(x, op=self.MPI.SUM if op == "sum" else self.MPI.MAX)
        import cupy
        a = cupy.asarray(np.atleast_1d(np.asarray(x, dtype=np.float64)))
        nccl_op = self._nccl_mod.NCCL_SUM if op == "sum" else self._nccl_mod.NCCL_MAX
        self.nccl.allReduce(a.data.ptr, a.data.ptr, a.size, self._nccl_mod.NCCL_FLOAT64, nccl_op, self._stream())
        out = cupy.asnumpy(a)
        if isinstance(x, np.ndarray):
            return out.astype(x.dtype).reshape(x.shape)
        return type(x)(out[0])

    # -------------------------------------------------------------------------- gradients
    def setup_zero(self, model, stage):
        """ZeRO-1: give the model this process's slice of the flat buffer (model.set_shard), before its
        AdamW state is allocated."""
        if stage == 0 or self.world_size == 1:
            return
        n = model.num_parameters
        if n % self.world_size != 0:
            if self.rank == 0:
                print(f"-z 1: {n} parameters do not split evenly over {self.world_size} processes; using ZeRO-0")
            return
        size = n // self.world_size
        model.set_shard(self.rank * size, (self.rank + 1) * size)
        self.zero = True
        if self.rank == 0:
            mib = lambda count: count * 4 * 2 / 2**20           # noqa: E731  m and v, float32
            print(f"ZeRO-1: each process keeps AdamW's m and v for {size:,} of {n:,} parameters "
                  f"({mib(size):,.1f} MiB instead of {mib(n):,.1f} MiB)")
        self._shard_grads = model.xp.empty(size, dtype=model.dtype)   # (n / world_size,)

    def reduce_gradients(self, model):
        """Average model.grads_memory over processes (all of it, or under ZeRO-1 this process's slice)."""
        if self.world_size == 1:
            return
        g = model.grads_memory                                   # (num_parameters,)
        if not self.zero:
            self._allreduce(g)
            g /= self.world_size
        else:
            start, end = model.shard
            self._reduce_scatter(g, self._shard_grads)
            g[start:end] = self._shard_grads / self.world_size

    def grad_norm(self, model):
        """The global gradient norm, the same number on every process."""
        if not self.zero:
            return model.grad_norm()
        return float(np.sqrt(self.sum(model.shard_grad_squares())))

    def gather_master_weights(self, model):
        """ZeRO-1 with bf16 parameters: a process's fp32 master weights are current only in its own slice
        (the all-gather after each step moves the bf16 parameters); gather them before they are saved."""
        if self.zero and model.master_memory is not None:
            self._allgather(model.master_memory, model.shard)

    def after_update(self, model):
        """ZeRO-1: gather every process's updated slice into the full parameter buffer."""
        if self.zero:
            self._allgather(model.params_memory, model.shard)

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

    def _allgather(self, a, shard):
        if self.nccl is not None:
            start, end = shard
            self.nccl.allGather(a[start:end].data.ptr, a.data.ptr, end - start, self._nccl_dtype(a), self._stream())
        elif isinstance(a, np.ndarray):
            self.comm.Allgather(self.MPI.IN_PLACE, a)
        else:
            h = self._host(a)
            self.comm.Allgather(self.MPI.IN_PLACE, h)
            _to_device(a, h)

    def finish(self):
        self.barrier()
        if self.launch is not None and self.launch.method == "fs" and self.rank == 0:
            try:                                 # so that a later run never reads this run's id
                os.remove(os.path.join(self.launch.folder, NCCL_ID_FILE))
            except OSError:
                pass


def _to_device(dst, host):
    """Copy a host array into a CuPy array (converting the dtype on the GPU)."""
    import cupy
    dst[...] = cupy.asarray(host)
