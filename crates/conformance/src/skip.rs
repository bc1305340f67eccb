//! The checked-in skip list (`crates/conformance/skip.yaml`): unsupported features and single
//! tests, each with the reason printed on its `SKIP` line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::case::CaseFile;

/// The skip list compiled into the runner, used unless `--skip-list` names another file.
pub const EMBEDDED: &str = include_str!("../skip.yaml");

/// Unsupported features and tests, with reasons.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipList {
    /// Feature name to reason; every other feature counts as supported.
    #[serde(default)]
    pub features: BTreeMap<String, String>,
    /// Test ShortName to reason.
    #[serde(default)]
    pub tests: BTreeMap<String, String>,
}

impl SkipList {
    /// Parses a skip list.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        serde_yaml_ng::from_str(text).context("parsing the skip list")
    }

    /// Reads a skip list file, or the embedded one when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Self::parse(&text).with_context(|| format!("in {}", path.display()))
            }
            None => Self::parse(EMBEDDED),
        }
    }

    /// Whether portcullis claims a feature.
    pub fn supports(&self, feature: &str) -> bool {
        !self.features.contains_key(feature)
    }

    /// Why a test is skipped, or `None` when it runs.
    pub fn reason(&self, case: &CaseFile) -> Option<String> {
        if let Some(reason) = self.tests.get(&case.name) {
            return Some(reason.clone());
        }
        if let Some(feature) = case.features.iter().find(|f| !self.supports(f)) {
            return Some(format!("{feature}: {}", self.features[feature]));
        }
        // Upstream passes these silently when the feature is claimed: they check the
        // "not supported" behaviour.
        if let Some(feature) = case.skip_if_supported.iter().find(|f| self.supports(f)) {
            return Some(format!(
                "upstream skips this when the feature is supported ({feature})"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, features: &[&str], skip_if_supported: &[&str]) -> CaseFile {
        let yaml = format!(
            "name: {name}\nbase_manifests: gateway\nfeatures: {features:?}\nskip_if_supported: {skip_if_supported:?}\n"
        );
        serde_yaml_ng::from_str(&yaml).expect("valid case file")
    }

    fn list() -> SkipList {
        SkipList::parse(
            "features: {TLSRoute: tls later, TLSRouteModeTerminate: later}\ntests: {Odd: 'TLS: issue 4'}\n",
        )
        .expect("valid list")
    }

    #[test]
    fn unsupported_features_and_listed_tests_skip() {
        let list = list();
        assert_eq!(
            list.reason(&case("A", &["Gateway", "TLSRoute"], &[])),
            Some("TLSRoute: tls later".into())
        );
        assert_eq!(
            list.reason(&case("Odd", &["Gateway"], &[])),
            Some("TLS: issue 4".into())
        );
        assert_eq!(
            list.reason(&case("B", &["Gateway", "HTTPRoute"], &[])),
            None
        );
    }

    #[test]
    fn skip_if_supported_runs_only_without_the_feature() {
        let list = list();
        assert_eq!(
            list.reason(&case("C", &["Gateway"], &["TLSRouteModeTerminate"])),
            None
        );
        let reason = list
            .reason(&case("D", &["Gateway"], &["HTTPRoute"]))
            .expect("skipped");
        assert!(reason.starts_with("upstream skips this when the feature is supported"));
    }

    #[test]
    fn the_embedded_list_parses() {
        let list = SkipList::load(None).expect("embedded skip list");
        assert!(!list.supports("UDPRoute"));
        assert!(list.supports("HTTPRoute"));
        // The list's own rule (see its header): every reason names the issue to follow.
        assert!(
            list.features
                .values()
                .chain(list.tests.values())
                .all(|reason| reason.contains("issue")),
            "{list:?}"
        );
    }
}
