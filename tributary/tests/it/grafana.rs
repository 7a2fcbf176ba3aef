//! The Grafana dashboards (grafana/) against the real schema: every SQL variable and panel query runs, with
//! Grafana's macros and variables substituted as Grafana does, over a few rows of every table it reads;
//! every Prometheus panel names only metrics the code records; every data source is provisioned.

use sea_orm::sqlx::{self, Column, PgPool, Row, TypeInfo, ValueRef};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tributary_processor::prices::series::Transforms;
use tributary_testkit::TestDb;

const PG: &str = "tributary-pg";
const PROM: &str = "tributary-prom";
const JAEGER: &str = "tributary-jaeger";

/// The dashboard time range: it holds every row of SEED.
const FROM: &str = "2025-12-31T23:00:00Z";
const TO: &str = "2026-01-01T01:00:00Z";

/// A few rows of every table the dashboards read, shaped as the processor writes them.
const SEED: &str = r#"
INSERT INTO price_points (instrument, ts, price, volume, seq, ret, derived) VALUES
    ('ACME', '2026-01-01T00:00:00Z', 10.0, 100, 1, NULL, '{"sma_20": null, "sma_50": null, "ema_12": 10.0, "ema_26": 10.0, "vol_20": null}'),
    ('ACME', '2026-01-01T00:01:00Z', 11.0, NULL, 2, 0.1, '{"sma_20": 10.5, "sma_50": null, "ema_12": 10.15, "ema_26": 10.07, "vol_20": null}'),
    ('ACME', '2026-01-01T00:02:00Z', 12.1, 50, 3, 0.1, '{"sma_20": 11.03, "sma_50": 11.03, "ema_12": 10.45, "ema_26": 10.22, "vol_20": 0.0}'),
    ('BETA', '2026-01-01T00:00:00Z', 20.0, NULL, 4, NULL, '{"sma_20": null, "sma_50": null, "ema_12": 20.0, "ema_26": 20.0, "vol_20": null}'),
    ('BETA', '2026-01-01T00:01:00Z', 21.0, NULL, 5, 0.05, '{"sma_20": 20.5, "sma_50": null, "ema_12": 20.15, "ema_26": 20.07, "vol_20": null}');
INSERT INTO price_series (instrument, points, first_ts, last_ts, version)
SELECT instrument, count(*), min(ts), max(ts), count(*) FROM price_points GROUP BY instrument;
INSERT INTO indices (name, base, weights, seq) VALUES ('duo', 100, '{"ACME": 0.5, "BETA": 0.5}', 6);
INSERT INTO index_constituents (name, instrument, weight) VALUES ('duo', 'ACME', 0.5), ('duo', 'BETA', 0.5);
INSERT INTO index_points (name, ts, level, ret) VALUES
    ('duo', '2026-01-01T00:00:00Z', 100.0, NULL),
    ('duo', '2026-01-01T00:01:00Z', 107.5, 0.075);

-- Two hosts, three fields, a sample every 10 s for three minutes.
INSERT INTO metric_samples (host, field, ts, value, seq)
SELECT h, f, '2026-01-01T00:00:00Z'::timestamptz + make_interval(secs => 10 * i), 10 * length(f) + i, i
FROM unnest(ARRAY['server-1', 'server-2']) h, unnest(ARRAY['cpu_usage', 'memory_usage', 'disk_usage']) f,
     generate_series(0, 17) i;
INSERT INTO metric_series (host, field, first_ts, last_ts)
SELECT host, field, min(ts), max(ts) FROM metric_samples GROUP BY host, field;
INSERT INTO metric_latest (host, ts, seq, fields)
SELECT host, max(ts), max(seq), jsonb_object_agg(field, value) || '{"os": "linux"}'
FROM metric_samples WHERE ts = '2026-01-01T00:02:50Z' GROUP BY host;
INSERT INTO metric_rollups
SELECT host, field, w, to_timestamp(floor(extract(epoch FROM ts) / w) * w), count(*), sum(value), min(value),
       max(value), avg(value), (array_agg(value ORDER BY ts))[1], (array_agg(value ORDER BY ts DESC))[1],
       percentile_disc(0.5) WITHIN GROUP (ORDER BY value), percentile_disc(0.95) WITHIN GROUP (ORDER BY value),
       percentile_disc(0.99) WITHIN GROUP (ORDER BY value), '\x00'::bytea, max(ts), NULL, NULL
FROM metric_samples, (VALUES (60), (3600)) AS widths (w)
GROUP BY 1, 2, 3, 4;
"#;

/// The columns of some panels, by (dashboard file, panel title): what their visualisations and overrides
/// rely on. Every other SQL panel is checked for its format only.
const COLUMNS: &[(&str, &str, &[&str])] = &[
    ("prices.json", "Price", &["time", "price", "low", "high"]),
    ("prices.json", "Moving averages", &["time", "price", "sma_20", "sma_50", "ema_12", "ema_26"]),
    ("prices.json", "Return", &["time", "ret"]),
    ("prices.json", "Volatility (vol_20)", &["time", "vol_20"]),
    ("prices.json", "Price series", &["instrument", "points", "first_ts", "last_ts", "version", "updated_at"]),
    ("prices.json", "Index level", &["time", "level"]),
    ("servers.json", "CPU usage", &["time", "host", "mean", "p95", "max"]),
    ("servers.json", "Memory usage", &["time", "host", "mean", "p95", "max"]),
    ("servers.json", "Disk usage", &["time", "host", "mean", "p95", "max"]),
    (
        "servers.json",
        "Latest sample per host",
        &["host", "ts", "cpu_usage", "memory_usage", "disk_usage", "fields", "seq", "updated_at"],
    ),
    ("servers.json", "Samples ($field)", &["time", "host", "field", "value"]),
];

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

/// Every dashboard as (file name, JSON), by name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect()
}

/// Every panel, those nested in rows included.
fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

/// Every query of the dashboard on the data source `uid`, as (panel title, target); a target without a
/// data source of its own uses its panel's.
fn targets<'a>(dashboard: &'a Value, uid: &str) -> Vec<(&'a str, &'a Value)> {
    let mut out = Vec::new();
    for p in panels(&dashboard["panels"]) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = t["datasource"]["uid"].as_str().or(p["datasource"]["uid"].as_str());
            if ds == Some(uid) {
                out.push((p["title"].as_str().unwrap_or("(untitled)"), t));
            }
        }
    }
    out
}

/// A template variable's value, as Grafana writes it into a query.
struct Var {
    name: String,
    value: String,
    /// Multi-value and include-all variables are written quoted (`'a','b'`), others raw.
    quoted: bool,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Replaces every `name(args)` in `sql` by `f(args)`; args are split at commas outside parentheses.
fn expand(sql: &str, name: &str, f: impl Fn(&[&str]) -> String) -> String {
    let open = format!("{name}(");
    let (mut out, mut rest) = (String::new(), sql);
    while let Some(i) = rest.find(&open) {
        out.push_str(&rest[..i]);
        let body = &rest[i + open.len()..];
        let (mut depth, mut start, mut args) = (1, 0, Vec::new());
        let end = body
            .char_indices()
            .find(|&(k, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 1 => {
                        args.push(body[start..k].trim());
                        start = k + 1;
                    }
                    _ => {}
                }
                depth == 0
            })
            .unwrap_or_else(|| panic!("unclosed {open} in {sql}"))
            .0;
        args.push(body[start..end].trim());
        out.push_str(&f(&args));
        rest = &body[end + 1..];
    }
    out + rest
}

/// `1m`, `'1m'`, `30s`, ... in seconds.
fn seconds(interval: &str) -> u64 {
    let s = interval.trim_matches(['\'', '"']);
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("interval {interval}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => panic!("interval {interval}"),
    }
}

/// Replaces `$name` (not followed by an identifier character) by `value`.
fn replace_var(sql: &str, name: &str, value: &str) -> String {
    let pat = format!("${name}");
    let (mut out, mut rest) = (String::new(), sql);
    while let Some(i) = rest.find(&pat) {
        out.push_str(&rest[..i]);
        rest = &rest[i + pat.len()..];
        let more = rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(if more { pat.as_str() } else { value });
    }
    out + rest
}

/// The query Grafana sends to PostgreSQL for `sql`: variables first (the browser does those, with
/// `$__interval` = 1m), then the macros (the server does those).
fn substitute(sql: &str, vars: &[Var]) -> String {
    let mut sql = sql.replace("$__interval_ms", "60000").replace("$__interval", "1m");
    for v in vars {
        let value = if v.quoted { quote(&v.value) } else { v.value.clone() };
        sql = sql.replace(&format!("${{{}:sqlstring}}", v.name), &quote(&v.value));
        sql = sql.replace(&format!("${{{}}}", v.name), &value);
        sql = replace_var(&sql, &v.name, &value);
    }
    let bucket = |a: &[&str]| {
        let s = seconds(a[1]);
        format!("to_timestamp(floor(extract(epoch from {})/{s})*{s})", a[0])
    };
    sql = expand(&sql, "$__timeFilter", |a| format!("{} BETWEEN '{FROM}' AND '{TO}'", a[0]));
    sql = expand(&sql, "$__timeFrom", |_| format!("'{FROM}'"));
    sql = expand(&sql, "$__timeTo", |_| format!("'{TO}'"));
    sql = expand(&sql, "$__timeGroupAlias", |a| format!(r#"{} AS "time""#, bucket(a)));
    sql = expand(&sql, "$__timeGroup", bucket);
    assert!(!sql.contains('$'), "a macro or variable left unsubstituted: {sql}");
    sql
}

/// Runs `sql`; the panel (or variable) named by `what` fails the test if it does not run or returns nothing.
async fn run(pool: &PgPool, what: &str, sql: String) -> Vec<sqlx::postgres::PgRow> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{sql}"));
    assert!(!rows.is_empty(), "{what}: no rows over the seeded data\n{sql}");
    rows
}

/// Resolves the dashboard's variables in order, as Grafana does: each to its first value.
async fn variables(pool: &PgPool, file: &str, dashboard: &Value) -> Vec<Var> {
    let mut vars = Vec::new();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().expect("a variable name").to_owned();
        let query = v["query"].as_str().or(v["query"]["rawSql"].as_str()).unwrap_or_default();
        let value = match v["type"].as_str() {
            Some("custom") => query.split(',').next().unwrap().trim().to_owned(),
            Some("query") => {
                assert_eq!(v["datasource"]["uid"], PG, "{file}: variable {name}: data source");
                let rows = run(pool, &format!("{file}: variable {name}"), substitute(query, &vars)).await;
                rows[0].try_get::<String, _>(0).unwrap_or_else(|e| panic!("{file}: variable {name}: {e}"))
            }
            other => panic!("{file}: variable {name}: type {other:?} is not handled here"),
        };
        let quoted = v["multi"] == true || v["includeAll"] == true;
        vars.push(Var { name, value, quoted });
    }
    vars
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_variable_and_panel_runs_against_the_schema() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");

    let mut checked = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        let vars = variables(&pool, &file, &dashboard).await;
        for (title, t) in targets(&dashboard, PG) {
            let what = format!("{file}: {title} ({})", t["refId"]);
            assert_eq!(t["rawQuery"], true, "{what}: rawQuery");
            assert_eq!(t["editorMode"], "code", "{what}: editorMode");
            let raw = t["rawSql"].as_str().unwrap_or_else(|| panic!("{what}: no rawSql"));
            let rows = run(&pool, &what, substitute(raw, &vars)).await;
            let columns: Vec<(&str, &str)> =
                rows[0].columns().iter().map(|c| (c.name(), c.type_info().name())).collect();
            let numeric = |ty: &str| matches!(ty, "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC");
            match t["format"].as_str() {
                Some("time_series") => {
                    assert!(
                        columns.iter().any(|&(n, ty)| n == "time" && matches!(ty, "TIMESTAMPTZ" | "TIMESTAMP")),
                        "{what}: no time column: {columns:?}"
                    );
                    assert!(columns.iter().any(|&(n, ty)| n != "time" && numeric(ty)), "{what}: no value: {columns:?}");
                }
                Some("table") => assert!(!columns.is_empty(), "{what}: no columns"),
                other => panic!("{what}: format {other:?}"),
            }
            // A column null in every row is a misspelt JSON key or a join that never matches.
            for (i, (name, _)) in columns.iter().enumerate() {
                let has_value = rows.iter().any(|r| !r.try_get_raw(i).unwrap().is_null());
                assert!(has_value, "{what}: column {name} is null in every row");
            }
            if let Some((_, _, want)) = COLUMNS.iter().find(|(f, p, _)| *f == file && *p == title) {
                let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
                assert_eq!(names, *want, "{what}: columns");
                checked.insert((file.clone(), title.to_owned()));
            }
        }
    }
    for (file, title, _) in COLUMNS {
        assert!(checked.contains(&(file.to_string(), title.to_string())), "{file}: no SQL panel titled {title}");
    }
}

#[tokio::test]
async fn derived_values_on_the_dashboards_are_the_default_windows() {
    let names = Transforms::default().names();
    let mut used = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        for (title, t) in targets(&dashboard, PG) {
            let sql = t["rawSql"].as_str().unwrap_or_default();
            for part in sql.split("derived->>'").skip(1) {
                let key = part.split('\'').next().unwrap();
                assert!(names.iter().any(|n| n == key), "{file}: {title}: {key} is not among {names:?}");
                used.insert(key.to_owned());
            }
        }
    }
    assert_eq!(used.len(), names.len(), "every default window is on a dashboard: {used:?} of {names:?}");
}

/// The metric names an expression reads: identifiers that are neither functions, keywords, label names
/// (inside `{}` or after `by`, `without`, ...) nor durations (inside `[]`).
fn metric_names(expr: &str) -> Vec<&str> {
    const LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset"];
    const AGGREGATIONS: &[&str] =
        &["sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "group"];
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (mut names, mut rest) = (Vec::new(), expr);
    while let Some(c) = rest.chars().next() {
        if let Some(close) = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' => Some('"'),
            _ => None,
        } {
            let end = rest[1..].find(close).unwrap_or_else(|| panic!("unclosed {c} in {expr}"));
            rest = &rest[end + 2..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest.find(|c: char| !word(c)).unwrap_or(rest.len());
            let (w, after) = rest.split_at(end);
            rest = after;
            let call = rest.trim_start().starts_with('(');
            if LISTS.contains(&w) && call {
                rest = &rest[rest.find(')').unwrap() + 1..];
            } else if !call && !KEYWORDS.contains(&w) && !AGGREGATIONS.contains(&w) {
                names.push(w);
            }
        } else if c.is_ascii_digit() || c == '.' {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '.');
        } else {
            rest = &rest[c.len_utf8()..];
        }
    }
    names
}

/// The metrics the code records, from their one declaration ([`tributary_broker::metric_names::ALL`]),
/// histograms with their `_bucket`, `_sum` and `_count` series.
fn recorded_metrics() -> BTreeSet<String> {
    use tributary_broker::metric_names::{ALL, MetricKind};
    let mut names = BTreeSet::new();
    for (name, kind, _) in ALL {
        let suffixes: &[&str] = if *kind == MetricKind::Histogram { &["_bucket", "_sum", "_count"] } else { &[""] };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// No metric is recorded under a name spelled out in place: every recorder names it from
/// `broker::metric_names`, where its help text is declared too.
#[test]
fn metric_names_are_declared_once() {
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let krate = e.unwrap().path();
        if krate.join("Cargo.toml").is_file() && krate.join("src").is_dir() {
            sources(&krate.join("src"), &mut files);
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap().split_whitespace().collect::<String>();
        for kind in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
            assert!(!text.contains(kind), "{}: a metric named in place ({kind}…)", f.display());
        }
    }
}

#[tokio::test]
async fn prometheus_panels_read_only_metrics_the_code_records() {
    let recorded = recorded_metrics();
    for name in ["tributary_events_total", "tributary_consumer_pending", "tributary_commit_latency_seconds_bucket"] {
        assert!(recorded.contains(name), "{name} not found in the sources: {recorded:?}");
    }
    let mut seen = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        for (title, t) in targets(&dashboard, PROM) {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{file}: {title}: no expr"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{file}: {title}: no metric in {expr}");
            for name in names {
                // `up` is Prometheus' own, per scrape target.
                assert!(name == "up" || recorded.contains(name), "{file}: {title}: {name} is not recorded: {expr}");
                seen.insert(name.to_owned());
            }
        }
    }
    for name in ["tributary_events_total", "tributary_dead_letters_total", "tributary_consumer_pending"] {
        assert!(seen.contains(name), "no panel shows {name}");
    }
    assert_eq!(
        metric_names("sum by (le, c) (rate(a_bucket{x=\"y\"}[1m])) / on (c) b offset 5m > 0.5"),
        ["a_bucket", "b"]
    );
}

#[tokio::test]
async fn every_data_source_the_dashboards_use_is_provisioned() {
    let path = grafana().join("provisioning/datasources/tributary.yml");
    let provisioned = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (uid, ty) in [(PG, "grafana-postgresql-datasource"), (PROM, "prometheus"), (JAEGER, "jaeger")] {
        let at = provisioned.find(&format!("uid: {uid}\n")).unwrap_or_else(|| panic!("{uid} not provisioned"));
        let entry = provisioned[at..].split("\n  - ").next().unwrap();
        assert!(entry.contains(&format!("type: {ty}\n")), "{uid} is not of type {ty}: {entry}");
    }
    fn uids<'a>(v: &'a Value, out: &mut BTreeSet<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(uid) = m.get("datasource").and_then(|d| d["uid"].as_str()) {
                    out.insert(uid);
                }
                m.values().for_each(|v| uids(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| uids(v, out)),
            _ => {}
        }
    }
    for (file, dashboard) in dashboards() {
        let mut used = BTreeSet::new();
        uids(&dashboard, &mut used);
        for uid in used {
            assert!([PG, PROM, JAEGER, "-- Grafana --"].contains(&uid), "{file}: data source {uid} is not provisioned");
        }
    }
    let provider = std::fs::read_to_string(grafana().join("provisioning/dashboards/tributary.yml")).unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"), "{provider}");
}

/// Every Prometheus panel's query parses: promtool checks them as the expressions of recording rules (the
/// dashboards use no Grafana variables in PromQL, so the text is what Prometheus gets).
#[test]
fn prometheus_panel_queries_parse_with_promtool_when_installed() {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for (file, dashboard) in dashboards() {
        for (title, t) in targets(&dashboard, PROM) {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{file}: {title}: no expr"));
            assert!(!expr.contains('$'), "{file}: {title}: a Grafana variable in PromQL: {expr}");
            // A JSON string is a YAML double-quoted scalar.
            rules.push_str(&format!("      - record: dashboard:query_{n}\n        expr: {}\n", Value::from(expr)));
            n += 1;
        }
    }
    assert!(n > 10, "only {n} Prometheus queries found");
    let path = std::env::temp_dir().join(format!("tributary-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&path, &rules).unwrap();
    let checked = promtool(&["check", "rules", path.to_str().unwrap()], &rules);
    std::fs::remove_file(&path).ok();
    if !checked {
        eprintln!("promtool not installed: the panels' PromQL not checked (scripts/test.sh installs it)");
    }
}

/// Runs promtool with `args` and asserts it succeeds, showing its output and `context` if not; false when
/// promtool is not installed.
fn promtool(args: &[&str], context: &str) -> bool {
    let Ok(out) = std::process::Command::new("promtool").args(args).output() else { return false };
    assert!(
        out.status.success(),
        "promtool {}: {}{}\n{context}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn the_prometheus_config_passes_promtool_when_installed() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../prometheus/prometheus.yml");
    if !promtool(&["check", "config", "--syntax-only", config], "") {
        eprintln!("promtool not installed: prometheus.yml not checked (scripts/test.sh installs it)");
    }
}
