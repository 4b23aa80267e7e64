//! `diffbragg config show|explain` end to end, each run in its own temp dir.

use diffbragg::config::{Config, EnsHopper, Hopper, Integrate, ProgramKind, StillsProcess};
use diffbragg::testutil::shared;
use std::path::Path;
use std::process::{Command, Output};

fn run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffbragg")).args(args).current_dir(cwd).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn show_integrate_with_the_users_override() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = shared("seed/simulation.phil");
    let o = run(
        tmp.path(),
        &[
            "config",
            "show",
            "--program",
            "integrate",
            sim.to_str().unwrap(),
            "--cmdlinePhil",
            "threshold=1e2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
            .to_string()
    };
    assert!(
        line("predictions.threshold").contains("= 100 ")
            && line("predictions.threshold").contains("# --cmdlinePhil `threshold=1e2`")
    );
    assert!(
        line("predictions.qcut").contains("= 0.0025 ")
            && line("predictions.qcut").ends_with("# simulation.phil:7")
    );
    assert!(line("predictions.weak_fraction").contains("# simulation.phil:18"));
    assert!(line("roi.shoebox_size").ends_with("# default"));
    assert!(line("predictions.verbose").ends_with("(ignored)"));
    // Every parameter is printed, then the warnings.
    assert!(out.lines().filter(|l| !l.starts_with('#')).count() >= 348);
    assert!(out.contains("# 2 warning(s):") && out.contains("taken as `predictions.threshold`"), "{out}");
    // The README's spelling of the flag is accepted too.
    let o = run(
        tmp.path(),
        &[
            "config",
            "show",
            "--program",
            "integrate",
            "--only-set",
            sim.to_str().unwrap(),
            "--cmdLinePhil",
            "qcut=0.003",
        ],
    );
    assert!(o.status.success() && stdout(&o).contains("predictions.qcut = 0.003 "), "{}", stderr(&o));
}

fn roundtrip<K: ProgramKind>(program: &str, seed: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let src = shared(&format!("seed/{seed}"));
    let o = run(tmp.path(), &["config", "show", "--program", program, src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = tmp.path().join("effective.phil");
    std::fs::write(&saved, stdout(&o)).unwrap();
    let (orig, _) = Config::<K>::load(&[&src], &[]).unwrap();
    let (again, _) = Config::<K>::load(&[&saved], &[]).unwrap();
    assert_eq!(orig.params, again.params, "{program} {seed}");
    let raw =
        |c: &Config<K>| c.unmodelled.iter().map(|r| (r.name.clone(), r.text.clone())).collect::<Vec<_>>();
    assert_eq!(raw(&orig), raw(&again));
}

#[test]
fn show_output_is_phil_that_reproduces_the_config() {
    roundtrip::<Hopper>("hopper", "stage_one_test.phil");
    roundtrip::<EnsHopper>("ens-hopper", "stage_two_test.phil");
    roundtrip::<Integrate>("integrate", "simulation.phil");
    roundtrip::<StillsProcess>("stills-process", "sim_processing.phil");
}

#[test]
fn explain_prints_type_default_units_status_help() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["config", "explain", "predictions.qcut"]);
    let out = stdout(&o);
    assert!(o.status.success());
    for want in [
        "type:    float",
        "default: 0.1",
        "units:   Å⁻¹ (rlp) or pixels",
        "status:  implemented",
        "read by integrate",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    let out = stdout(&run(tmp.path(), &["config", "explain", "debug_mode"]));
    assert!(out.contains("recognised, ignored: every output is always written"), "{out}");
    let out = stdout(&run(tmp.path(), &["config", "explain", "global_threshold"]));
    assert!(
        out.contains("DIALS stills_process parameter; read by stills-process")
            && out.contains("float or Auto"),
        "{out}"
    );
    let o = run(tmp.path(), &["config", "explain", "init.nabc"]);
    assert!(!o.status.success() && stderr(&o).contains("did you mean `init.Nabc`"), "{}", stderr(&o));
}

#[test]
fn errors_name_file_and_line_and_exit_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.phil");
    std::fs::write(&bad, "init {\n  Nabc = 30 31\n}\nrefiner.randomize_device = False\n").unwrap();
    let o = run(tmp.path(), &["config", "show", "--program", "hopper", "bad.phil"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("2 errors"), "{e}");
    assert!(
        e.contains(&format!("{}: line 2: `init.Nabc = 30 31`: expected 3 numbers, found 2", bad.display())),
        "{e}"
    );
    assert!(e.contains("line 4: unknown parameter `refiner.randomize_device` (did you mean `refiner.randomize_devices`?)"), "{e}");
}
