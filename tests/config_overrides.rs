//! `--cmdlinePhil` overrides, error messages, precedence and path resolution.
//! Each test that touches the file system works in its own temporary folder.

use diffbragg::config::render::of_kind;
use diffbragg::config::{
    Config, EnsHopper, EnsHopperConfig, Hopper, HopperConfig, IntegrateConfig, Origin, ProgramKind,
    StillsProcess, StillsProcessConfig, WarningKind,
};
use std::path::{Path, PathBuf};

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Load in-memory phil texts named `/cfg/<name>` with cwd `/cwd`.
fn load<K: ProgramKind>(files: &[(&str, &str)], over: &str) -> diffbragg::error::Result<Config<K>> {
    let files: Vec<(PathBuf, String)> =
        files.iter().map(|(n, t)| (PathBuf::from(format!("/cfg/{n}")), t.to_string())).collect();
    Config::<K>::from_texts(&files, &args(over), Path::new("/cwd")).map(|(c, _)| c)
}

fn err<K: ProgramKind>(files: &[(&str, &str)], over: &str) -> String {
    load::<K>(files, over).expect_err("expected an error").to_string()
}

#[test]
fn suffix_matching() {
    let c: IntegrateConfig = load(&[], "threshold=1e2").unwrap();
    assert_eq!(c.predictions.threshold, 100.0);
    let c: EnsHopperConfig = load(&[], "load_data_from_refl=True").unwrap();
    assert!(c.refiner.load_data_from_refl && !c.load_data_from_refls);
    let c: HopperConfig = load(&[], "fix.Nabc=True").unwrap();
    assert!(c.fix.nabc);
    // A full name wins over longer names ending with it.
    let c: HopperConfig = load(&[], "skip=3").unwrap();
    assert_eq!((c.skip, c.downsamp_spec.skip), (Some(3), false));
    // Several components of a suffix.
    let c: HopperConfig = load(&[], "structure_factors.mtz_column=F").unwrap();
    assert_eq!(c.simulator.structure_factors.mtz_column.as_deref(), Some("F"));
    // DIALS names by suffix.
    let c: StillsProcessConfig = load(&[], "global_threshold=Auto kernel_size=1,1").unwrap();
    assert_eq!(c.spotfinder.threshold.dispersion.kernel_size, [1, 1]);
    // Full phil syntax is accepted in one argument too.
    let c: HopperConfig = load(&[], "init{G=5}").unwrap();
    assert_eq!(c.init.g, 5.0);
}

#[test]
fn ambiguity_lists_every_candidate() {
    // hopper reads both filter thresholds, so the program cannot break the tie.
    let e = err::<Hopper>(&[], "threshold=1e2");
    for c in
        ["filter_during_refinement.threshold", "filter_after_refinement.threshold", "predictions.threshold"]
    {
        assert!(e.contains(c), "{e}");
    }
    assert!(e.contains("ambiguous") && e.contains("`threshold`"), "{e}");
    let e = err::<Hopper>(&[], "Nabc=1,1,1");
    assert!(e.contains("init.Nabc") && e.contains("maxs.Nabc") && e.contains("fix.Nabc"), "{e}");
}

#[test]
fn unknown_names_are_named_with_suggestions() {
    let e = err::<Hopper>(&[], "init.nabc=3,3,3");
    assert!(e.contains("`init.nabc`") && e.contains("did you mean `init.Nabc`?"), "{e}");
    let e = err::<Hopper>(&[], "no_such_thing_at_all=1");
    assert!(
        e.contains("`no_such_thing_at_all`")
            && e.contains("unknown parameter")
            && !e.contains("did you mean"),
        "{e}"
    );
    // The README's `prep_time` on the command line is recognised (ignored), not unknown.
    let (_, w) = HopperConfig::from_texts(&[], &args("prep_time=60"), Path::new("/cwd")).unwrap();
    assert!(of_kind(&w, WarningKind::Ignored)[0].message.contains("prep_time"));
    // In a file: the file, the line and the name.
    let e = err::<Hopper>(&[("a.phil", "outdir = x\ninit {\n  nabc = 3 3 3\n}\n")], "");
    assert!(
        e.contains("/cfg/a.phil: line 3: unknown parameter `init.nabc` (did you mean `init.Nabc`?)"),
        "{e}"
    );
    // Scopes and parameters confused.
    let e = err::<Hopper>(&[("a.phil", "init = 3\n")], "");
    assert!(e.contains("line 1") && e.contains("`init` is a scope"), "{e}");
    let e = err::<Hopper>(&[("a.phil", "init.Nabc { x = 3 }\n")], "");
    assert!(e.contains("`init.Nabc` is a parameter, not a scope"), "{e}");
}

#[test]
fn type_errors_name_the_parameter_and_the_value() {
    let e = err::<Hopper>(&[], "refiner.sigma_r=abc");
    assert!(e.contains("parameter `refiner.sigma_r`") && e.contains("`abc` is not a number"), "{e}");
    let e = err::<Hopper>(&[("p.phil", "\ninit.Nabc = 30 31\n")], "");
    assert!(
        e.contains("/cfg/p.phil: line 2")
            && e.contains("`init.Nabc = 30 31`")
            && e.contains("expected 3 numbers, found 2"),
        "{e}"
    );
    let e = err::<Hopper>(&[], "fix.G=maybe");
    assert!(e.contains("fix.G") && e.contains("`maybe` is not True or False"), "{e}");
    let e = err::<Hopper>(&[], "roi.shoebox_size=-4");
    assert!(e.contains("roi.shoebox_size") && e.contains("-4"), "{e}");
    let e = err::<Hopper>(&[], "logging.rank0_level=loud");
    assert!(e.contains("`loud` is not one of: low, normal, high"), "{e}");
    let e = err::<Hopper>(&[], "outdir=None init.G=None roi.shoebox_size=x");
    assert!(e.contains("init.G") && e.contains("None is not allowed"), "{e}");
    // All errors of a load are reported together, the first 20 listed.
    assert!(e.starts_with("2 errors"), "{e}");
    let many: String = (0..25).map(|i| format!("bogus_{i} = 1\n")).collect();
    let e = err::<Hopper>(&[("many.phil", &many)], "");
    assert!(e.starts_with("25 errors") && e.contains("line 20: unknown parameter `bogus_19`"), "{e}");
    assert!(!e.contains("bogus_20") && e.contains("… and 5 more"), "{e}");
    // Syntax errors carry the line.
    let e = err::<Hopper>(&[("s.phil", "a {\n b = 1\n")], "");
    assert!(e.contains("/cfg/s.phil: line 1") && e.contains("never closed"), "{e}");
}

#[test]
fn decided_traps() {
    let e = err::<Hopper>(&[("m.phil", "method = \"Nelder-Mead\"\n")], "");
    assert!(e.contains("line 1") && e.contains("only L-BFGS-B is implemented"), "{e}");
    let e = err::<Hopper>(&[], "niter=3");
    assert!(e.contains("niter") && e.contains("basin hopping is not implemented"), "{e}");
    let e = err::<Hopper>(&[("n.phil", "simulator.crystal.num_mosaicity_samples = 25\n")], "");
    assert!(e.contains("n.phil: line 1") && e.contains("must be 1 or even"), "{e}");
    let e = err::<EnsHopper>(&[], "Fhkl_channel_bounds=8950");
    assert!(e.contains("space_group") && e.contains("Fhkl_channel_bounds"), "{e}");
    let e = err::<StillsProcess>(&[], "algorithm=radial_profile");
    assert!(e.contains("not implemented"), "{e}");
    // Integrate with the meaningless default qcut/label_weak_col pair is advised against.
    let (_, w) = IntegrateConfig::from_texts(&[], &[], Path::new("/cwd")).unwrap();
    assert_eq!(of_kind(&w, WarningKind::Advice).len(), 1);
    // detz_shift centre and restraint units are documented as mm.
    let d = diffbragg::config::schema_of(diffbragg::config::Program::Hopper);
    assert_eq!(d.get("centers.detz_shift").unwrap().units, "mm");
    assert_eq!(d.get("betas.ucell_alpha").unwrap().units, "deg²");
    assert!(d.get("filter_after_refinement.enable").unwrap().help.contains("Honoured"));
}

#[test]
fn precedence_files_then_command_line() {
    let a = ("a.phil", "init.G = 2\nroi.shoebox_size = 8\n");
    let b = ("b.phil", "init.G = 3\n");
    let c: HopperConfig = load(&[a, b], "").unwrap();
    assert_eq!((c.init.g, c.roi.shoebox_size), (3.0, 8));
    assert!(
        matches!(c.sources.origin("init.G"), Some(Origin::File { path, line: 1 }) if path.ends_with("b.phil"))
    );
    let c: HopperConfig = load(&[a, b], "init.G=4").unwrap();
    assert_eq!(c.init.g, 4.0);
    assert_eq!(c.sources.0["init.G"].len(), 3, "every assignment is recorded");
    // Setting a parameter in two files is layering, not a repeat.
    let (_, w) = HopperConfig::from_texts(
        &[(PathBuf::from("/x/a.phil"), a.1.into()), (PathBuf::from("/x/b.phil"), b.1.into())],
        &[],
        Path::new("/"),
    )
    .unwrap();
    assert!(of_kind(&w, WarningKind::Repeated).is_empty());
}

#[test]
fn relative_paths_resolve_against_the_phil_files_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("configs");
    std::fs::create_dir(&sub).unwrap();
    let phil = sub.join("stage1.phil");
    std::fs::write(
        &phil,
        "exp_ref_spec_file = ../inputs/spec.txt\nroi.hotpixel_mask = masks/hot.mask\noutdir = \"out dir\"\n",
    )
    .unwrap();
    let (c, _) = HopperConfig::load(&[&phil], &[]).unwrap();
    assert_eq!(c.exp_ref_spec_file, Some(sub.join("../inputs/spec.txt")));
    assert_eq!(c.roi.hotpixel_mask, Some(sub.join("masks/hot.mask")));
    assert_eq!(c.outdir, Some(sub.join("out dir")));
    // Typed on the command line: against the directory the command runs in.
    let files = vec![(phil.clone(), std::fs::read_to_string(&phil).unwrap())];
    let (c, _) =
        HopperConfig::from_texts(&files, &args("outdir=results reference_geom=/abs/geo.expt"), tmp.path())
            .unwrap();
    assert_eq!(c.outdir, Some(tmp.path().join("results")));
    assert_eq!(c.refiner.reference_geom, Some(PathBuf::from("/abs/geo.expt")));
    // A relative phil file name is taken relative to the given cwd.
    let (c, _) = HopperConfig::from_texts(
        &[(PathBuf::from("configs/stage1.phil"), files[0].1.clone())],
        &[],
        tmp.path(),
    )
    .unwrap();
    assert_eq!(c.roi.hotpixel_mask, Some(sub.join("masks/hot.mask")));
}

#[test]
fn unreadable_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.phil");
    let e = HopperConfig::load(&[&missing], &[]).unwrap_err().to_string();
    assert!(e.contains("nope.phil") && e.contains("cannot read"), "{e}");
    let bin = tmp.path().join("bin.phil");
    std::fs::write(&bin, b"outdir = a\ninit.G = \xff\xfe\n").unwrap();
    let e = HopperConfig::load(&[&bin], &[]).unwrap_err().to_string();
    assert!(e.contains("bin.phil") && e.contains("line 2") && e.contains("UTF-8"), "{e}");
}

#[test]
fn dials_unmodelled_scopes_are_kept_and_warned() {
    let (c, w) = StillsProcessConfig::from_texts(
        &[(
            PathBuf::from("/p/proc.phil"),
            "indexing.refinement_protocol.n_macro_cycles = 3\ndispatch.hit_finder.enable = False\n".into(),
        )],
        &args("output.composite_output=True"),
        Path::new("/"),
    )
    .unwrap();
    let names: Vec<&str> = c.unmodelled.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "indexing.refinement_protocol.n_macro_cycles",
            "dispatch.hit_finder.enable",
            "output.composite_output"
        ]
    );
    let ni = of_kind(&w, WarningKind::NotImplemented);
    assert_eq!(ni.len(), 1, "one warning lists them all");
    assert_eq!(ni[0].message.lines().count(), 4);
    // A typo inside the modelled spotfinder scope is still an error.
    let e = StillsProcessConfig::from_texts(
        &[(PathBuf::from("/p/proc.phil"), "spotfinder.threshold.dispersion.gloabl_threshold = 3\n".into())],
        &[],
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean `spotfinder.threshold.dispersion.global_threshold`"), "{e}");
}

#[test]
fn parameters_not_read_by_the_program_are_listed() {
    let (_, w) = HopperConfig::from_texts(
        &[(PathBuf::from("/p/x.phil"), "predictions.qcut = 0.002\nrefiner.stage_two.n_bin = 3\n".into())],
        &[],
        Path::new("/"),
    )
    .unwrap();
    let u = of_kind(&w, WarningKind::NotUsedByProgram);
    assert_eq!(u.len(), 1);
    assert!(
        u[0].message.contains("predictions.qcut") && u[0].message.contains("refiner.stage_two.n_bin"),
        "{}",
        u[0]
    );
    // A stage-1 file given to integrate: the refinement settings are listed, the simulator ones are not.
    let (_, w) =
        IntegrateConfig::load(&[diffbragg::testutil::shared("seed/stage_one_test.phil")], &[]).unwrap();
    let u = of_kind(&w, WarningKind::NotUsedByProgram);
    assert!(u[0].message.contains("init.Nabc") && u[0].message.contains("refiner.sigma_r"), "{}", u[0]);
    assert!(
        !u[0].message.contains("simulator.beam.size_mm") && !u[0].message.contains("downsamp_spec"),
        "{}",
        u[0]
    );
}
