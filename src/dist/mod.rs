//! Distribution of work across processes (MPI ranks) and devices.
//!
//! * [`Comm`] is the narrow interface the stages use: rank/size, node-local
//!   rank (for the GPU choice), barrier, f64 sum-allreduce, byte broadcast and
//!   gather, abort. [`SingleProcess`] implements it for one process; with the
//!   `mpi` feature, [`mpi_comm::MpiComm`] implements it over MPI.
//! * [`longest_first`] is the LPT schedule: items sorted by decreasing cost,
//!   each given to the least-loaded rank (ties to the lowest rank), so every
//!   rank computes the same assignment without communication.
//! * A failing rank must never leave the others hanging: [`install_abort_on_panic`]
//!   turns a panic into `MPI_Abort` when more than one rank runs, and the CLI
//!   calls [`Comm::abort`] on a fatal error.

#[cfg(feature = "mpi")]
pub mod mpi_comm;

/// What the stages need from a communicator.
pub trait Comm {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Rank among the processes on this node.
    fn local_rank(&self) -> usize;
    /// Number of processes on this node.
    fn local_size(&self) -> usize;
    fn barrier(&self);
    /// Element-wise sum over all ranks, result on every rank.
    fn allreduce_sum(&self, buf: &mut [f64]);
    /// Element-wise max over all ranks, result on every rank.
    fn allreduce_max_u64(&self, buf: &mut [u64]);
    /// Replace `buf` on every rank with root's bytes.
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>);
    /// Every rank's bytes, in rank order, on every rank.
    fn allgather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>>;
    /// End the whole job (all ranks) with `code`.
    fn abort(&self, code: i32) -> !;
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// A short description for logs, e.g. `rank 1/4 (local 1/2)`.
    fn describe(&self) -> String {
        format!(
            "rank {}/{} (node-local {}/{})",
            self.rank(),
            self.size(),
            self.local_rank(),
            self.local_size()
        )
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Comm for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn allreduce_sum(&self, _buf: &mut [f64]) {}
    fn allreduce_max_u64(&self, _buf: &mut [u64]) {}
    fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) {}
    fn allgather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The communicator for this run: MPI when built with the `mpi` feature
/// (a plain `diffbragg ...` without a launcher is then a one-rank MPI job),
/// otherwise a single process.
pub fn init() -> Box<dyn Comm> {
    #[cfg(feature = "mpi")]
    {
        Box::new(mpi_comm::MpiComm::init())
    }
    #[cfg(not(feature = "mpi"))]
    {
        Box::new(SingleProcess)
    }
}

/// Make a panic on any rank abort the whole MPI job instead of hanging the
/// others in a collective. A no-op for a single process.
pub fn install_abort_on_panic(comm: &dyn Comm) {
    if comm.size() <= 1 {
        return;
    }
    let rank = comm.rank();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("rank {rank}: panic; aborting all ranks");
        #[cfg(feature = "mpi")]
        mpi_comm::abort_world(3);
        #[cfg(not(feature = "mpi"))]
        std::process::exit(3);
    }));
}

/// Longest-processing-time-first assignment of items with `costs` to
/// `nranks` ranks. Returns, per rank, the item indices in scheduling order.
/// Deterministic: ties in cost keep the input order, ties in load go to the
/// lowest rank.
pub fn longest_first(costs: &[u64], nranks: usize) -> Vec<Vec<usize>> {
    let nranks = nranks.max(1);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; nranks];
    let mut out = vec![Vec::new(); nranks];
    for i in order {
        let r = (0..nranks).min_by_key(|&r| (load[r], r)).unwrap();
        load[r] += costs[i].max(1);
        out[r].push(i);
    }
    out
}

/// The GPU ordinal for this process: node-local rank modulo the number of
/// visible devices. `None` when no device is visible.
pub fn device_for(comm: &dyn Comm, visible_devices: usize) -> Option<usize> {
    (visible_devices > 0).then(|| comm.local_rank() % visible_devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpt_balances_and_is_deterministic() {
        let costs = [5, 9, 1, 7, 3, 8, 2, 6];
        let a = longest_first(&costs, 3);
        assert_eq!(a, longest_first(&costs, 3));
        let loads: Vec<u64> = a.iter().map(|v| v.iter().map(|&i| costs[i]).sum()).collect();
        assert_eq!(loads.iter().sum::<u64>(), 41);
        // LPT bound: max load ≤ 4/3 of the optimum (≥ 41/3 ≈ 13.7); here it reaches 14.
        assert_eq!(*loads.iter().max().unwrap(), 14);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        // The largest item goes first, to rank 0.
        assert_eq!(a[0][0], 1);
    }

    #[test]
    fn lpt_with_more_ranks_than_items() {
        let a = longest_first(&[3, 1], 4);
        assert_eq!(a, vec![vec![0], vec![1], vec![], vec![]]);
        assert_eq!(longest_first(&[], 2), vec![Vec::<usize>::new(), vec![]]);
    }

    #[test]
    fn single_process_comm_and_devices() {
        let c = SingleProcess;
        let mut v = [1.0, 2.0];
        c.allreduce_sum(&mut v);
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(c.allgather_bytes(b"ab"), vec![b"ab".to_vec()]);
        assert_eq!(device_for(&c, 4), Some(0));
        assert_eq!(device_for(&c, 0), None);
    }
}
