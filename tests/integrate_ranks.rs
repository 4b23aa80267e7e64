//! Two ranks (threads behind an in-process `Comm`, standing in for MPI): each
//! takes a contiguous block of shots (numpy `array_split`), writes its own
//! `rank{R}_preds.*` files with rank-local ids, and the tables and the
//! `NAME` summary (gathered by rank 0) hold the same predictions as one rank.

mod integrate_common;

use std::sync::{Arc, Barrier, Mutex};

use diffbragg::dist::{Comm, SingleProcess};
use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::integrate::{run, IntegrateOptions, RunSummary};
use diffbragg::store::Store;
use integrate_common as c;

struct Shared {
    n: usize,
    barrier: Barrier,
    bytes: Mutex<Vec<Vec<u8>>>,
    sums: Mutex<Vec<Vec<f64>>>,
    maxes: Mutex<Vec<Vec<u64>>>,
}

/// Collectives over threads of one process.
struct ThreadComm {
    rank: usize,
    sh: Arc<Shared>,
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.sh.n
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn local_size(&self) -> usize {
        self.sh.n
    }
    fn barrier(&self) {
        self.sh.barrier.wait();
    }
    fn allreduce_sum(&self, buf: &mut [f64]) {
        self.sh.sums.lock().unwrap()[self.rank] = buf.to_vec();
        self.barrier();
        let all = self.sh.sums.lock().unwrap().clone();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = all.iter().map(|v| v[i]).sum();
        }
        self.barrier();
    }
    fn allreduce_max_u64(&self, buf: &mut [u64]) {
        self.sh.maxes.lock().unwrap()[self.rank] = buf.to_vec();
        self.barrier();
        let all = self.sh.maxes.lock().unwrap().clone();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = all.iter().map(|v| v[i]).max().unwrap();
        }
        self.barrier();
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        if self.rank == root {
            self.sh.bytes.lock().unwrap()[root] = buf.clone();
        }
        self.barrier();
        *buf = self.sh.bytes.lock().unwrap()[root].clone();
        self.barrier();
    }
    fn allgather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        self.sh.bytes.lock().unwrap()[self.rank] = mine.to_vec();
        self.barrier();
        let all = self.sh.bytes.lock().unwrap().clone();
        self.barrier();
        all
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}

fn predictions_text(store: &Store) -> String {
    let q = store.query("SELECT * FROM predictions ORDER BY shot_id, pred_id").unwrap();
    arrow::util::pretty::pretty_format_batches(&q.batches).unwrap().to_string()
}

#[test]
fn two_ranks_split_the_shots_and_agree_with_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 3, seed: 41, ..Default::default() });
    let pred = c::write_pred_phil(
        tmp.path(),
        "threshold = 50\nqcut = 0.003\nlabel_weak_col = rlp\nweak_fraction = 0.7",
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let one = tmp.path().join("one");
    let s1 = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &one), &SingleProcess).unwrap();

    let two = tmp.path().join("two");
    let sh = Arc::new(Shared {
        n: 2,
        barrier: Barrier::new(2),
        bytes: Mutex::new(vec![vec![]; 2]),
        sums: Mutex::new(vec![vec![]; 2]),
        maxes: Mutex::new(vec![vec![]; 2]),
    });
    let summaries: Vec<RunSummary> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                let comm = ThreadComm { rank, sh: sh.clone() };
                let opts = IntegrateOptions::new(&pred, &proc, &ds.stage1, &two);
                scope.spawn(move || run(&opts, &comm).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Rank 0 reports the totals and every rank's rows; rank 1 only its own counts.
    assert_eq!((summaries[0].n_shots, summaries[0].n_predicted), (3, 3));
    assert_eq!(summaries[0].rows.len(), 3);
    assert_eq!(summaries[1].n_shots, 1);
    let ranks: Vec<(u32, usize)> = summaries[0].rows.iter().map(|r| (r.rank, r.exp_idx)).collect();
    assert_eq!(ranks, vec![(0, 0), (0, 1), (1, 0)], "array_split(3, 2) = [2, 1], ids rank-local");
    // Same shots in the same order as one rank.
    let ids1: Vec<i64> = s1.rows.iter().map(|r| r.shot_id).collect();
    let ids2: Vec<i64> = summaries[0].rows.iter().map(|r| r.shot_id).collect();
    assert_eq!(ids1, ids2);
    for r in &summaries[0].rows {
        assert!(r.exp_name.ends_with(&format!("rank{}_preds.expt", r.rank)));
    }
    // Per-rank DIALS files; their rows are the single-rank rows split by shot.
    let r0 = read_refl(two.join("expts_and_refls/rank0_preds.refl")).unwrap();
    let r1 = read_refl(two.join("expts_and_refls/rank1_preds.refl")).unwrap();
    let all1 = read_refl(one.join("expts_and_refls/rank0_preds.refl")).unwrap();
    assert_eq!(r0.nrows() + r1.nrows(), all1.nrows());
    assert!(r1.get_int("id").unwrap().iter().all(|&i| i == 0));
    let x1 = all1.get_vec3("xyzcal.px").unwrap();
    let last = all1.get_int("id").unwrap().iter().position(|&i| i == 2).unwrap();
    assert_eq!(r1.get_vec3("xyzcal.px").unwrap(), &x1[last..]);
    // The tables (catalog published by rank 0) hold the same predictions.
    assert!(two.join("catalog.duckdb").is_file());
    assert_eq!(predictions_text(&Store::open(&one).unwrap()), predictions_text(&Store::open(&two).unwrap()));
    let n_csv = std::fs::read_to_string(two.join("preds_for_hopper.csv")).unwrap().lines().count();
    assert_eq!(n_csv, 4, "header + 3 shots");
}
