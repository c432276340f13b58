//! Helpers shared by the plan tests: fixtures are YAML files under `tests/fixtures`.

use std::path::PathBuf;

use splitter_plan::{
    model::{
        Index, Object,
        parse::{Parsed, parse},
    },
    plan::{
        self, ListenerPlan, Plan, PlanConfig,
        status::{Condition, RouteStatus},
    },
};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The objects of a YAML text; panics on any error (fixtures must be valid).
pub fn objects(yaml: &str) -> Vec<Object> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    docs.into_iter()
        .filter(|d| !d.is_null())
        .filter_map(|d| match parse(d) {
            Ok(Parsed::Object(o)) => Some(*o),
            Ok(Parsed::Skipped { .. }) => None,
            Err(e) => panic!("fixture object rejected: {e}"),
        })
        .collect()
}

/// An index of the given YAML texts, applied in order (a later object replaces an earlier one).
pub fn index_of(texts: &[&str]) -> Index {
    Index::from_objects(texts.iter().flat_map(|t| objects(t)))
}

pub fn plan_of(texts: &[&str]) -> Plan {
    plan::build(&index_of(texts), &PlanConfig::default(), None)
}

/// `base.yaml` plus the named fixtures.
pub fn plan_with(fixtures: &[&str]) -> Plan {
    let mut texts = vec![fixture("base.yaml")];
    texts.extend(fixtures.iter().map(|f| fixture(f)));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    plan_of(&refs)
}

pub fn listener(plan: &Plan, port: u16) -> &ListenerPlan {
    plan.listeners
        .iter()
        .find(|l| l.key().port == port)
        .unwrap_or_else(|| panic!("no listener on port {port}: {:#?}", plan.listeners))
}

pub fn route<'a>(plan: &'a Plan, ns: &str, name: &str) -> &'a RouteStatus {
    plan.routes
        .iter()
        .find(|r| r.route.namespace == ns && r.route.name == name)
        .unwrap_or_else(|| panic!("no status for route {ns}/{name}"))
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#?}"))
}
