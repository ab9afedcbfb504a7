//! NODE and CLIENT arguments: an id, or a name (looked up in `--network`,
//! or among all networks when it is unambiguous there).

use meshplane_sdk::{Code, proto as pb};

use crate::{Ctx, Failure};

fn pick<T>(
    kind: &str,
    arg: &str,
    network: Option<&str>,
    found: Vec<T>,
    net_of: impl Fn(&T) -> &str,
) -> Result<T, Failure> {
    let mut found = found;
    match found.len() {
        0 => Err(not_found(kind, arg, network)),
        1 => Ok(found.remove(0)),
        _ => {
            let nets: Vec<&str> = found.iter().map(&net_of).collect();
            Err(Failure::Usage(format!(
                "{kind} name {arg:?} is in several networks ({}); pass --network",
                nets.join(", ")
            )))
        }
    }
}

fn not_found(kind: &str, arg: &str, network: Option<&str>) -> Failure {
    let where_ = network
        .map(|n| format!(" in network {n:?}"))
        .unwrap_or_default();
    Failure::NotFound(format!("no {kind} with id or name {arg:?}{where_}"))
}

/// The node `arg` names (an id, or a name).
pub async fn node(ctx: &Ctx, arg: &str, network: Option<&str>) -> Result<pb::Node, Failure> {
    match ctx.client.nodes().get(arg).await {
        Ok(n) if network.is_none_or(|net| n.network == net) => return Ok(n),
        Ok(_) => {}
        Err(e) if e.code() == Code::NotFound || e.code() == Code::InvalidArgument => {}
        Err(e) => return Err(e.into()),
    }
    let nodes = ctx.client.nodes().list_all(network).await?;
    let found = nodes.into_iter().filter(|n| n.name == arg).collect();
    pick("node", arg, network, found, |n: &pb::Node| &n.network)
}

/// The id of the node `arg` names.
pub async fn node_id(ctx: &Ctx, arg: &str, network: Option<&str>) -> Result<String, Failure> {
    node(ctx, arg, network).await.map(|n| n.id)
}

/// The node or external client `arg` names, as (id, network).
pub async fn node_or_client(
    ctx: &Ctx,
    arg: &str,
    network: Option<&str>,
) -> Result<(String, String), Failure> {
    match node(ctx, arg, network).await {
        Ok(n) => Ok((n.id, n.network)),
        Err(Failure::NotFound(_)) => {
            let c = ext_client(ctx, arg, network).await.map_err(|f| match f {
                Failure::NotFound(_) => not_found("node or external client", arg, network),
                other => other,
            })?;
            Ok((c.id, c.network))
        }
        Err(f) => Err(f),
    }
}

/// The external client `arg` names (an id, or a name).
pub async fn ext_client(
    ctx: &Ctx,
    arg: &str,
    network: Option<&str>,
) -> Result<pb::ExtClient, Failure> {
    match ctx.client.ext_clients().get(arg).await {
        Ok(c) if network.is_none_or(|net| c.network == net) => return Ok(c),
        Ok(_) => {}
        Err(e) if e.code() == Code::NotFound || e.code() == Code::InvalidArgument => {}
        Err(e) => return Err(e.into()),
    }
    let clients = ctx.client.ext_clients().list_all(network, None).await?;
    let found = clients.into_iter().filter(|c| c.name == arg).collect();
    pick(
        "external client",
        arg,
        network,
        found,
        |c: &pb::ExtClient| &c.network,
    )
}
