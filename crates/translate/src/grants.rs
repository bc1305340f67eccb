//! ReferenceGrant: whether an object in one namespace may refer to an object in another.

use model::Snapshot;

/// The referring side of a cross-namespace reference.
pub(crate) struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The referenced side.
pub(crate) struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// "A ReferenceGrant is required for any cross-namespace reference": same-namespace
/// references are always allowed; otherwise a grant in the target's namespace must list the
/// referrer's group, kind and namespace in `from` and the target's group, kind and (if set)
/// name in `to`.
pub(crate) fn permitted(snapshot: &Snapshot, from: &From<'_>, to: &To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    snapshot
        .reference_grants
        .iter()
        .filter(|(name, _)| *name.namespace == *to.namespace)
        .any(|(_, grant)| {
            let from_ok = grant.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            });
            let to_ok = grant.spec.to.iter().any(|t| {
                core_group(&t.group) == core_group(to.group)
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to.name)
            });
            from_ok && to_ok
        })
}

/// The core group is written `""` or `core`.
fn core_group(group: &str) -> &str {
    if group == "core" { "" } else { group }
}
