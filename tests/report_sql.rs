//! `schemas/residuals.json` and the views of `sql/30_report_residuals.sql`: DuckDB
//! must give the same per-panel, per-shot, dataset and before/after numbers as
//! `report::stats` / `report::summary` on the same rows.
//!
//! The table is created from the schema file (its type language mapped to DuckDB
//! types), so a schema/row-type mismatch fails here too.

use std::collections::BTreeMap;

use diffbragg::conventions::rot_xyz;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::report::residuals::{EvalOptions, ModelKind, ResidualRow};
use diffbragg::report::stats::{by_panel, by_shot, panel_groups, DatasetStats, GroupStats};
use diffbragg::report::summary::{compare, Comparison};
use diffbragg::testutil::shared;
use duckdb::Connection;
use serde_json::Value;

const SCHEMA: &str = include_str!("../schemas/residuals.json");
const VIEWS: &str = include_str!("../sql/30_report_residuals.sql");

fn duck_type(t: &str) -> String {
    match t {
        "int64" => "BIGINT".into(),
        "int32" => "INTEGER".into(),
        "uint32" => "UINTEGER".into(),
        "float64" => "DOUBLE".into(),
        "utf8" => "VARCHAR".into(),
        s if s.starts_with("struct<") => {
            let inner = &s[7..s.len() - 1];
            let f: Vec<String> = inner
                .split(',')
                .map(|p| {
                    let (n, t) = p.split_once(':').unwrap();
                    format!("{n} {}", duck_type(t))
                })
                .collect();
            format!("STRUCT({})", f.join(", "))
        }
        other => panic!("type {other} not expected in residuals"),
    }
}

fn create_table(conn: &Connection) {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let cols: Vec<String> = schema["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let nn = if c["nullable"].as_bool().unwrap() { "" } else { " NOT NULL" };
            format!("{} {}{nn}", c["name"].as_str().unwrap(), duck_type(c["type"].as_str().unwrap()))
        })
        .collect();
    conn.execute_batch(&format!("CREATE TABLE residuals ({});", cols.join(", "))).unwrap();
}

fn dbl(v: f64) -> String {
    if v.is_finite() {
        format!("'{v:?}'::DOUBLE")
    } else {
        "NULL".into()
    }
}

fn insert(conn: &Connection, rows: &[ResidualRow]) {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "({}, {}, '{}', {}, {{'h': {}, 'k': {}, 'l': {}}}, {})",
                    r.shot_id,
                    r.refl_id,
                    r.model.as_str(),
                    r.panel,
                    r.hkl[0],
                    r.hkl[1],
                    r.hkl[2],
                    [
                        r.d,
                        r.two_theta_obs_deg,
                        r.two_theta_cal_deg,
                        r.obs_px[0],
                        r.obs_px[1],
                        r.cal_px[0],
                        r.cal_px[1],
                        r.obs_mm[0],
                        r.obs_mm[1],
                        r.cal_mm[0],
                        r.cal_mm[1],
                        r.radial_mm,
                        r.transverse_mm,
                        r.delpsi_deg,
                        r.obs_var_mm2,
                        r.wavelength
                    ]
                    .map(dbl)
                    .join(", ")
                )
            })
            .collect();
        conn.execute_batch(&format!("INSERT INTO residuals VALUES {};", values.join(", "))).unwrap();
    }
}

/// Rows of a view as column-name → value maps (numbers as f64, NULL as NaN).
fn query(conn: &Connection, sql: &str) -> Vec<BTreeMap<String, f64>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let names: Vec<String> = rows.as_ref().unwrap().column_names();
    let mut out = vec![];
    while let Some(r) = rows.next().unwrap() {
        let mut m = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.get_ref(i).unwrap() {
                duckdb::types::ValueRef::Null => f64::NAN,
                duckdb::types::ValueRef::Text(t) => {
                    ModelKind::parse(std::str::from_utf8(t).unwrap()).unwrap() as u8 as f64
                }
                _ => r.get::<_, f64>(i).unwrap(),
            };
            m.insert(n.clone(), v);
        }
        out.push(m);
    }
    out
}

fn close(what: &str, a: f64, b: f64) {
    let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(ok, "{what}: sql {a}, rust {b}");
}

fn check_group(what: &str, v: &BTreeMap<String, f64>, s: &GroupStats) {
    close(&format!("{what} n"), v["n"], s.n as f64);
    for (k, x) in [
        ("rmsd_um", s.rmsd_um),
        ("radial_rmsd_um", s.radial_rmsd_um),
        ("transverse_rmsd_um", s.transverse_rmsd_um),
        ("delpsi_mean_deg", s.delpsi_mean_deg),
        ("delpsi_sd_deg", s.delpsi_sd_deg),
        ("delpsi_median_deg", s.delpsi_median_deg),
        ("delpsi_mad_deg", s.delpsi_mad_deg),
        ("cc_radial_delpsi", s.cc_radial_delpsi),
        ("cc_transverse_delpsi", s.cc_transverse_delpsi),
        ("n_delpsi_pos", s.n_delpsi_pos as f64),
        ("n_delpsi_neg", s.n_delpsi_neg as f64),
        ("mean_radial_um", s.mean_radial_um),
        ("mean_transverse_um", s.mean_transverse_um),
        ("cc_delpsi_d2theta", s.cc_delpsi_d2theta),
    ] {
        if let Some(&y) = v.get(k) {
            close(&format!("{what} {k}"), y, x);
        }
    }
}

fn cunir_comparison() -> Comparison {
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let refined = ExperimentList::read(dir.join("indexed.expt")).unwrap();
    let refls = read_refl(dir.join("indexed.refl")).unwrap();
    let mut input = refined.clone();
    for e in &mut input.experiments {
        let x = e.crystal.as_mut().unwrap();
        let u = rot_xyz(0.0005, -0.0003, 0.0002) * x.u_matrix();
        x.set_u(&u);
    }
    let o = EvalOptions::default();
    let (cmp, _, _) = compare(&input, &refls, &refined, None, &o, &o, Some(&[11, 12, 13, 14, 15])).unwrap();
    cmp
}

#[test]
fn schema_matches_the_row_type() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    assert_eq!(schema["name"], "residuals");
    assert!(schema["version"].as_u64().unwrap() >= 1);
    let cols = schema["columns"].as_array().unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ResidualRow::COLUMNS);
    for c in cols {
        assert!(!c["unit"].as_str().unwrap().is_empty() && !c["description"].as_str().unwrap().is_empty());
    }
    for k in schema["key"].as_array().unwrap() {
        assert!(names.contains(&k.as_str().unwrap()));
    }
}

#[test]
fn views_reproduce_rust_statistics() {
    let cmp = cunir_comparison();
    assert_eq!(cmp.len(), 360);
    let mut rows: Vec<ResidualRow> = cmp.rows().cloned().collect();
    // An input row without a refined partner, and rows without a variance.
    let mut lone = cmp.before[0].clone();
    lone.refl_id = 9999;
    lone.panel = 3;
    rows.push(lone);
    for r in rows.iter_mut().step_by(7) {
        r.obs_var_mm2 = f64::NAN;
    }
    let conn = Connection::open_in_memory().unwrap();
    create_table(&conn);
    conn.execute_batch(VIEWS).unwrap();
    insert(&conn, &rows);

    for model in [ModelKind::Input, ModelKind::Refined] {
        let mine: Vec<ResidualRow> = rows.iter().filter(|r| r.model == model).cloned().collect();
        let m = model.as_str();
        let sql =
            query(&conn, &format!("SELECT * FROM residuals_by_panel WHERE model = '{m}' ORDER BY panel"));
        let rust = by_panel(&mine);
        assert_eq!(sql.len(), rust.len());
        for (v, (p, s)) in sql.iter().zip(&rust) {
            assert_eq!(v["panel"], *p as f64);
            check_group(&format!("{m} panel {p}"), v, s);
        }
        let sql =
            query(&conn, &format!("SELECT * FROM residuals_by_shot WHERE model = '{m}' ORDER BY shot_id"));
        let rust = by_shot(&mine);
        assert_eq!(sql.len(), 5);
        for (v, (shot, s)) in sql.iter().zip(&rust) {
            assert_eq!(v["shot_id"], *shot as f64);
            check_group(&format!("{m} shot {shot}"), v, s);
        }
        let sql = query(&conn, &format!("SELECT * FROM residuals_dataset WHERE model = '{m}'"));
        let d = DatasetStats::of(&mine, &[]);
        check_group(&format!("{m} dataset"), &sql[0], &d.overall);
        close("weighted rmsd", sql[0]["weighted_rmsd_um"], d.weighted_rmsd_um);
        close("n weighted", sql[0]["n_weighted"], d.n_weighted as f64);
        close("n shots", sql[0]["n_shots"], d.n_shots as f64);
        assert!(d.n_weighted < mine.len());
    }
    // Before vs after: only paired reflections (the lone row's panel 3 is absent).
    let sql = query(&conn, "SELECT * FROM residuals_panel_comparison ORDER BY panel");
    let rust = cmp.per_panel();
    assert_eq!(sql.len(), rust.len());
    for (v, (p, b, a)) in sql.iter().zip(&rust) {
        assert_eq!(v["panel"], *p as f64);
        for (side, s) in [("input", b), ("refined", a)] {
            let sub: BTreeMap<String, f64> = v
                .iter()
                .filter_map(|(k, x)| k.strip_suffix(&format!("_{side}")).map(|k| (k.to_string(), *x)))
                .chain([("n".to_string(), v["n"])])
                .collect();
            check_group(&format!("comparison {side} panel {p}"), &sub, s);
        }
    }
}

#[test]
fn views_over_many_panels_and_an_empty_table() {
    let conn = Connection::open_in_memory().unwrap();
    create_table(&conn);
    conn.execute_batch(VIEWS).unwrap();
    for view in ["residuals_by_panel", "residuals_by_shot", "residuals_dataset", "residuals_panel_comparison"]
    {
        assert!(query(&conn, &format!("SELECT * FROM {view}")).is_empty(), "{view}");
    }
    // Spread the CuNiR rows over fake panels (odd and even counts, tiny groups)
    // to exercise median/MAD interpolation and the n < 3 correlation rule.
    let cmp = cunir_comparison();
    let mut rows: Vec<ResidualRow> = cmp.rows().cloned().collect();
    for r in &mut rows {
        r.panel = (r.refl_id as u32 * 7 + r.shot_id as u32) % 23;
    }
    insert(&conn, &rows);
    let input: Vec<ResidualRow> = rows.iter().filter(|r| r.model == ModelKind::Input).cloned().collect();
    let rust = by_panel(&input);
    let sql = query(&conn, "SELECT * FROM residuals_by_panel WHERE model = 'input' ORDER BY panel");
    assert_eq!(sql.len(), 23);
    let mut parity = [0, 0];
    for (v, (p, s)) in sql.iter().zip(&rust) {
        parity[s.n % 2] += 1;
        check_group(&format!("panel {p}"), v, s);
    }
    assert!(parity[0] > 0 && parity[1] > 0, "{parity:?}");
    let groups = panel_groups(&diffbragg::geometry::Detector::default(), 0);
    assert!(DatasetStats::of(&input, &groups).overall.n == input.len());
}
