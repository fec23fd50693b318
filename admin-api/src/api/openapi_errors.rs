//! Documents the error answers every operation can give, so the OpenAPI document states
//! every status a client (or a schema-driven fuzzer such as schemathesis) will see:
//! 400 for malformed parameters or bodies, 401/403 on authenticated routes, 404 where a
//! path, an `…_id` query parameter or a body names a record, 409 for writes that race,
//! 413/415 where a body is read. Each is the `ApiError` JSON body. Routes still list their own expected errors; this only
//! adds what is missing.

use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

pub(crate) struct CommonErrors;

fn add(op: &mut Operation, status: &str, why: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(why)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
                .into()
        });
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            let ops = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, write) in ops {
                let Some(op) = op.as_mut() else { continue };
                // `security(())`: a public route (login, refresh).
                let public = op.security.as_ref().is_some_and(|reqs| {
                    reqs.iter()
                        .any(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
                });
                add(
                    op,
                    "400",
                    "Invalid parameter or body (`invalid_field`, `invalid_body`)",
                );
                if !public {
                    add(op, "401", "Missing, invalid, expired or revoked token");
                    add(op, "403", "Not permitted for this account (audited)");
                }
                // A record named by the path, by an `…_id` query parameter or by an id
                // in the body (an organisation, a host, an invitee) may not exist.
                let names_a_record = has_path_params
                    || op.request_body.is_some()
                    || op
                        .parameters
                        .as_ref()
                        .is_some_and(|ps| ps.iter().any(|p| p.name.ends_with("_id")));
                if names_a_record {
                    add(op, "404", "No such record");
                }
                if write && !public {
                    add(
                        op,
                        "409",
                        "Conflicts with the current state or a concurrent change",
                    );
                }
                if op.request_body.is_some() {
                    add(op, "413", "Body larger than the limit");
                    add(op, "415", "Wrong Content-Type");
                }
            }
        }
    }
}
