//! GatewayClass acceptance: a class is ours when its `controllerName` equals ours.

use std::collections::BTreeSet;

use model::status::{Condition, ConditionType, Reason, ResourceStatus, StatusSet};
use model::{Kind, ResourceKey, Snapshot};

use crate::Options;

/// Accepts every GatewayClass of our controller, writes their status, and returns their
/// names. Classes of other controllers are not ours to judge and get no status.
pub(crate) fn accepted(
    snapshot: &Snapshot,
    options: &Options,
    status: &mut StatusSet,
) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for (name, class) in &snapshot.gateway_classes {
        if class.spec.controller_name != options.controller_name {
            continue;
        }
        let generation = class.metadata.generation.unwrap_or(1);
        // parametersRef points at implementation-specific configuration; portcullis has
        // none, so a class that names parameters cannot be honoured.
        let conditions = match &class.spec.parameters_ref {
            Some(parameters) => vec![Condition::new(
                ConditionType::Accepted,
                false,
                Reason::InvalidParameters,
                format!(
                    "parametersRef {}/{} is not supported by this controller",
                    parameters.kind, parameters.name
                ),
                generation,
            )],
            None => {
                accepted.insert(name.clone());
                vec![
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "accepted by portcullis",
                        generation,
                    ),
                    Condition::new(
                        ConditionType::SupportedVersion,
                        true,
                        Reason::SupportedVersion,
                        "Gateway API v1.5.1",
                        generation,
                    ),
                ]
            }
        };
        status.0.insert(
            ResourceKey::new(Kind::GatewayClass, "", name),
            ResourceStatus::GatewayClass { conditions },
        );
    }
    accepted
}
