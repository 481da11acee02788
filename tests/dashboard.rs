//! The example Grafana dashboard in `dashboards/airbag.json` against the docs: it must be
//! valid JSON with panels, and every `airbag_*` metric its queries use must be documented
//! in README.md's Metrics section, so the dashboard cannot drift from what airbag exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Every `airbag_[a-z0-9_]+` name in `text`, with the histogram series suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("airbag_") {
        let preceded_by_name = text[..start].chars().next_back().is_some_and(is_name_char);
        if preceded_by_name {
            continue;
        }
        let rest = &text[start..];
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        if name.len() == "airbag_".len() {
            continue;
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_string());
    }
    names
}

/// The `expr` of every query of every panel, including panels nested in collapsed rows.
fn panel_exprs(panels: &[Value], exprs: &mut Vec<(String, String)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if let Some(targets) = panel["targets"].as_array() {
            for target in targets {
                if let Some(expr) = target["expr"].as_str() {
                    exprs.push((title.to_string(), expr.to_string()));
                }
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_exprs(nested, exprs);
        }
    }
}

/// README.md from its `## Metrics` heading up to the next `## ` heading.
fn readme_metrics_section(readme: &str) -> &str {
    let start = readme
        .find("\n## Metrics")
        .expect("README.md has a `## Metrics` section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    &section[..end]
}

#[test]
fn dashboard_is_valid_json_with_panels() {
    let dashboard: Value =
        serde_json::from_str(&read("dashboards/airbag.json")).expect("dashboard is valid JSON");
    let panels = dashboard["panels"]
        .as_array()
        .expect("dashboard has a `panels` array");
    assert!(!panels.is_empty(), "dashboard has no panels");
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "dashboard has a title"
    );
}

#[test]
fn dashboard_metrics_are_documented_in_readme() {
    let dashboard: Value =
        serde_json::from_str(&read("dashboards/airbag.json")).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    panel_exprs(
        dashboard["panels"].as_array().expect("`panels` array"),
        &mut exprs,
    );
    assert!(!exprs.is_empty(), "no panel query has an `expr`");

    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .collect();
    assert!(!used.is_empty(), "no panel query uses an airbag_* metric");

    let readme = read("README.md");
    let documented = metric_names(readme_metrics_section(&readme));
    let missing: Vec<String> = used
        .difference(&documented)
        .map(|name| {
            let panels: BTreeSet<&str> = exprs
                .iter()
                .filter(|(_, expr)| metric_names(expr).contains(name))
                .map(|(title, _)| title.as_str())
                .collect();
            format!("{name} (used by: {})", Vec::from_iter(panels).join(", "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by dashboards/airbag.json but not documented in README.md's Metrics section:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn metric_names_strip_histogram_suffixes() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(airbag_request_duration_seconds_bucket[5m]))) \
         / airbag_request_duration_seconds_count + airbag_request_duration_seconds_sum \
         + xairbag_not_a_metric + airbag_requests_total{rung!=\"provider\"}",
    );
    let expected: BTreeSet<String> = ["airbag_request_duration_seconds", "airbag_requests_total"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
}
