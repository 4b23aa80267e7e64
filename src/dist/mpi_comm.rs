//! [`Comm`](super::Comm) over MPI (feature `mpi`, rsmpi).
//!
//! The node-local rank comes from `MPI_Comm_split_type(SHARED)`, so no
//! launcher-specific environment variable (SLURM_LOCALID, ...) is needed.

use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub struct MpiComm {
    world: SimpleCommunicator,
    shared: SimpleCommunicator,
    // Dropping the universe finalises MPI. Fields drop in declaration order, so
    // it comes last: the communicators must be freed before MPI_Finalize.
    _universe: mpi::environment::Universe,
}

impl MpiComm {
    pub fn init() -> MpiComm {
        let universe = mpi::initialize().expect("MPI was already initialised");
        let world = universe.world();
        let shared = world.split_shared(world.rank());
        MpiComm { world, shared, _universe: universe }
    }
}

/// Abort every rank (used from the panic hook, where no `MpiComm` is at hand).
pub fn abort_world(code: i32) -> ! {
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::exit(code)
}

impl super::Comm for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.shared.rank() as usize
    }
    fn local_size(&self) -> usize {
        self.shared.size() as usize
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn allreduce_sum(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
    }
    fn allreduce_max_u64(&self, buf: &mut [u64]) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::max());
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        let root_proc = self.world.process_at_rank(root as i32);
        let mut len = [buf.len() as u64];
        root_proc.broadcast_into(&mut len[..]);
        buf.resize(len[0] as usize, 0);
        root_proc.broadcast_into(&mut buf[..]);
    }
    fn allgather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let n = self.size();
        let mut lens = vec![0u64; n];
        self.world.all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let counts: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut part = mpi::datatype::PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        let mut out = Vec::with_capacity(n);
        for r in 0..n {
            let s = displs[r] as usize;
            out.push(all[s..s + counts[r] as usize].to_vec());
        }
        out
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
