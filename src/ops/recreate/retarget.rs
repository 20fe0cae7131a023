//! `thaw --image SERVICE=IMAGE` and `--env SERVICE:KEY=VALUE`: a snapshot's containers
//! recreated from other images, or with changed environment variables.

use crate::docker::capture::ContainerSpec;
use crate::docker::rebase::{self, FieldChange};
use crate::docker::ContainerEngine;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{Digest, ImageManifest};

use super::SiteOptions;

/// Whether `--image` names this container's service.
pub fn is_retargeted(spec: &ContainerSpec, opts: &SiteOptions) -> bool {
    opts.images.iter().any(|(s, _)| s == spec.service())
}

/// The `--image` and `--env` of a thaw, checked against the snapshot's services.
pub struct Retargets<'a> {
    opts: &'a SiteOptions,
    checks: Vec<String>,
}

impl<'a> Retargets<'a> {
    /// Every SERVICE named must be one of the snapshot's.
    pub fn new(
        opts: &'a SiteOptions,
        specs: &[(ContainerSpec, ImageManifest, Digest)],
    ) -> Result<Retargets<'a>> {
        let services: Vec<&str> = specs.iter().map(|(s, _, _)| s.service()).collect();
        let named = opts
            .images
            .iter()
            .map(|(s, _)| (s, "--image"))
            .chain(opts.env.iter().map(|(s, _, _)| (s, "--env")));
        for (service, flag) in named {
            if !services.contains(&service.as_str()) {
                return Err(Error::usage(format!(
                    "{flag} names service {service}, which the snapshot does not have; its services are {}",
                    services.join(", ")
                )));
            }
        }
        Ok(Retargets {
            opts,
            checks: vec![],
        })
    }

    /// Moves `spec` to its new image (if one is named) and applies its `--env`; returns
    /// what changes in its configuration.
    pub fn apply(
        &mut self,
        engine: &dyn ContainerEngine,
        spec: &mut ContainerSpec,
        arch: &str,
    ) -> Result<Vec<FieldChange>> {
        let service = spec.service().to_string();
        let mut changes = Vec::new();
        if let Some((_, image)) = self.opts.images.iter().find(|(s, _)| *s == service) {
            changes = self.move_to(engine, spec, image, arch)?;
        }
        for (_, key, value) in self.opts.env.iter().filter(|(s, _, _)| *s == service) {
            let from = spec.env(key);
            rebase::set_env(&mut spec.config, key, value);
            let field = format!("Env {key}");
            changes.retain(|c| c.field != field);
            changes.push(FieldChange::new(
                field,
                from.unwrap_or_else(|| "(none)".into()),
                value.clone(),
            ));
        }
        Ok(changes)
    }

    fn move_to(
        &mut self,
        engine: &dyn ContainerEngine,
        spec: &mut ContainerSpec,
        image: &str,
        arch: &str,
    ) -> Result<Vec<FieldChange>> {
        let old = match &spec.image_config {
            Some(c) => c.clone(),
            None => old_image_defaults(engine, spec)?,
        };
        let new = engine
            .image(image)
            .map_err(|e| match e.kind {
                ErrorKind::NotFound => Error::not_found(format!(
                    "image {image}, named by --image for service {}, is not on the Docker engine at {}",
                    spec.service(),
                    engine.endpoint().host
                ))
                .with_hint(format!(
                    "pull it there (docker pull {image}) or load it (docker load -i FILE), then thaw again"
                )),
                _ => e,
            })?;
        let new_arch = new.architecture.clone();
        if !arch.is_empty() && !new_arch.is_empty() && new_arch != arch {
            return Err(Error::conflict(format!(
                "image {image} (--image for service {}) is built for {new_arch}; the Docker engine at {} runs {arch}",
                spec.service(),
                engine.endpoint().host
            ))
            .with_hint("name an image of the engine's architecture"));
        }
        let defaults = rebase::image_defaults(&new.config);
        let changes = rebase::rebase(&mut spec.config, &old, &defaults, image);
        self.checks.push(format!(
            "image {image} for service {} on the engine ({})",
            spec.service(),
            if new_arch.is_empty() { "?" } else { &new_arch }
        ));
        spec.image = image.to_string();
        spec.image_id = new.id;
        if !new_arch.is_empty() {
            spec.platform.architecture = new_arch;
        }
        spec.image_config = Some(defaults);
        Ok(changes)
    }

    /// What the pre-flight checked, for the plan.
    pub fn checks(self) -> Vec<String> {
        self.checks
    }
}

/// A snapshot written before image defaults were recorded: the old image, if the engine
/// still has it, says what they were.
fn old_image_defaults(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
) -> Result<serde_json::Value> {
    let img = engine
        .image(&spec.image_id)
        .map_err(|e| match e.kind {
            ErrorKind::NotFound => Error::not_found(format!(
                "container {} was frozen before freezer recorded its image's defaults, and its image {} ({}) is not on the Docker engine at {} to read them from",
                spec.name, spec.image, spec.image_id, engine.endpoint().host
            ))
            .with_hint("load the old image on that engine, or freeze the site again and thaw that snapshot"),
            _ => e,
        })?;
    Ok(rebase::image_defaults(&img.config))
}
