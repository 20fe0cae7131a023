//! What freezer asks of a container engine when it recreates, fills and starts a site:
//! one trait, [`ContainerEngine`], in freezer's own words. [`Engine`] answers it over the
//! Docker Engine API (Docker and Podman, through bollard); tests answer it with
//! [`super::fake::FakeEngine`], which keeps containers, volumes, networks and images in
//! memory and records every call.
//!
//! Reading a site to freeze it (capture, hold, mirrors of remote volumes) stays on
//! [`Engine`]: it is engine-specific work that only a real engine can be asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, ImportImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use serde_json::Value;

use super::capture::NetworkSpec;
use super::{ContainerInfo, Endpoint, Engine, Flavor, Output};
use crate::error::{Error, Result};

/// The engine's properties, as its `/info` says them.
#[derive(Debug, Clone, Default)]
pub struct EngineInfo {
    /// The CPU architecture as the kernel names it (`x86_64`, `aarch64`).
    pub architecture: String,
    /// Its data root (where local volumes live).
    pub root: String,
    pub version: String,
}

/// One container as the engine has it now.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    pub running: bool,
    /// `running`, `exited`, `created`, `paused`, …
    pub status: String,
    pub exit_code: i64,
    /// `healthy`, `unhealthy`, `starting`; None without a health check.
    pub health: Option<String>,
    /// What the last health check printed (trimmed), when there was one.
    pub last_check: Option<String>,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Its mounts: (destination, source on the engine's host).
    pub mounts: Vec<(String, String)>,
    /// The overlay2 upper directory of its writable layer, when the engine uses overlay2.
    pub upper_dir: Option<String>,
    /// Its addresses, one for each network it is on (empty ones left out).
    pub addresses: Vec<String>,
}

/// An image the engine has.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    pub id: String,
    /// Docker's architecture name (`amd64`, `arm64`); empty when the image does not say.
    pub architecture: String,
    /// Its `Config` (Cmd, Entrypoint, Env, …), as the Engine API gives it.
    pub config: Value,
}

/// The operations of a container engine that thawing a site needs. Every method blocks;
/// names are container, volume, network and image names as the engine knows them. A
/// thing that is not there is an error of kind `NotFound`.
pub trait ContainerEngine: Sync {
    /// Where the engine was reached (messages name its host).
    fn endpoint(&self) -> &Endpoint;
    /// Docker or Podman, rootful or rootless.
    fn flavor(&self) -> Flavor;
    fn info(&self) -> Result<EngineInfo>;

    fn container(&self, name: &str) -> Result<ContainerFacts>;
    /// The containers of one site (an empty list when the engine has none).
    fn site_containers(&self, site: &str) -> Result<Vec<ContainerInfo>>;
    /// Creates a container from an Engine API create body (`Config` with `HostConfig`
    /// and `NetworkingConfig`), not started.
    fn create_container(&self, name: &str, body: &Value) -> Result<()>;
    fn connect_network(&self, container: &str, network: &str, aliases: &[String]) -> Result<()>;
    fn start_container(&self, name: &str) -> Result<()>;
    fn pause_container(&self, name: &str) -> Result<()>;
    fn stop_container(&self, name: &str) -> Result<()>;
    /// Removes a container whatever its state; with `anonymous_volumes`, the volumes the
    /// engine made for it too (named ones stay).
    fn remove_container(&self, name: &str, anonymous_volumes: bool) -> Result<()>;
    /// Waits for a started container to exit: its exit code.
    fn wait_container(&self, name: &str) -> Result<i64>;
    /// The last `lines` lines a container wrote; empty when the engine has none to give.
    fn log_tail(&self, name: &str, lines: usize) -> String;
    /// Runs `argv` (no shell) in a running container with `env` added, up to `timeout`:
    /// its exit code (None when it did not finish in time) and what it wrote, in order,
    /// each piece marked true when it came on stderr.
    fn exec_argv(
        &self,
        container: &str,
        argv: Vec<String>,
        env: Vec<String>,
        user: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<(Option<i64>, Vec<Output>)>;
    /// Extracts a tar archive into a container at `dest`.
    fn upload(&self, container: &str, dest: &str, archive: std::fs::File) -> Result<()>;
    /// The first bytes (at most `limit`, and at least that many when the archive is
    /// longer) of the tar archive of `path` in a container.
    fn archive_head(&self, container: &str, path: &str, limit: usize) -> Result<Vec<u8>>;

    /// A volume's mount point on the engine's host.
    fn volume_mountpoint(&self, name: &str) -> Result<PathBuf>;
    fn create_volume(
        &self,
        name: &str,
        driver: &str,
        options: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<()>;
    fn remove_volume(&self, name: &str) -> Result<()>;

    fn network_exists(&self, name: &str) -> Result<bool>;
    fn create_network(&self, name: &str, spec: &NetworkSpec) -> Result<()>;
    fn remove_network(&self, name: &str) -> Result<()>;

    fn image(&self, reference: &str) -> Result<ImageFacts>;
    /// Loads a `docker save` archive; `image` names it in messages.
    fn load_image(&self, archive: &Path, image: &str) -> Result<()>;
    fn remove_image(&self, reference: &str) -> Result<()>;

    /// True when the engine runs on this machine, so a volume's mount point is a path
    /// freezer can read and write directly.
    fn is_local(&self) -> bool {
        self.endpoint().host.starts_with("unix://")
    }

    /// Refuses to copy the files of volumes and bind mounts of a rootless engine. Its
    /// files on disk belong to the ids of its user namespace (the container's root is
    /// the user, its other users subordinate ids), so read in place their owners would
    /// be wrong, and read through the engine they are too (Podman 4.3's archive API
    /// gives every file to root).
    fn refuse_rootless_files(&self, what: &str) -> Result<()> {
        let flavor = self.flavor();
        if !flavor.rootless {
            return Ok(());
        }
        Err(Error::usage(format!(
            "the engine at {} is rootless: {what} would get its files' owners wrong (they are shifted by the engine's user namespace, which freezer does not map)",
            self.endpoint().host
        ))
        .with_hint(format!(
            "freeze and thaw sites with volumes or bind mounts on a rootful engine ({} as root); a dehydrated freeze of a site whose only state is its database, and sites without volumes, work",
            flavor.cli()
        )))
    }

    /// An error for a container that is not running when it should be (it exited, or
    /// was never started): its state, exit code and last log lines. None while it runs.
    fn not_running(&self, name: &str, what: &str) -> Result<Option<Error>> {
        let c = self.container(name)?;
        if c.running {
            return Ok(None);
        }
        let status = if c.status.is_empty() {
            "stopped"
        } else {
            &c.status
        };
        // In the message, not a hint: a caller's clean-up hint takes that place.
        let logs = match self.log_tail(name, 20) {
            l if l.is_empty() => format!("`{} logs {name}` says why", self.flavor().cli()),
            l => format!("its last log lines:\n{l}"),
        };
        Ok(Some(Error::other(format!(
            "container {name} is {status} (exit code {}) {what}; {logs}",
            c.exit_code
        ))))
    }

    /// Runs `sh -c command` in a running container (as `user` when given), up to
    /// `timeout`: its exit code (None when it did not finish in time) and its output,
    /// stdout and stderr interleaved.
    fn exec(
        &self,
        container: &str,
        command: &str,
        user: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<(Option<i64>, String)> {
        let argv = ["sh", "-c", command].map(str::to_string).to_vec();
        let (code, output) = self.exec_argv(container, argv, vec![], user, timeout)?;
        let bytes: Vec<u8> = output.into_iter().flat_map(|(_, b)| b).collect();
        Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
    }
}

impl ContainerEngine for Engine {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn info(&self) -> Result<EngineInfo> {
        let i = self.call("asking the engine for its properties", |d| async move {
            d.info().await
        })?;
        Ok(EngineInfo {
            architecture: i.architecture.unwrap_or_default(),
            root: i.docker_root_dir.unwrap_or_default(),
            version: i.server_version.unwrap_or_default(),
        })
    }

    fn container(&self, name: &str) -> Result<ContainerFacts> {
        Ok(facts_of(self.inspect_container(name)?))
    }

    fn site_containers(&self, site: &str) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .list_sites()?
            .into_iter()
            .find(|s| s.name == site)
            .map(|s| s.containers)
            .unwrap_or_default())
    }

    fn create_container(&self, name: &str, body: &Value) -> Result<()> {
        let body: bollard::models::ContainerCreateBody = serde_json::from_value(body.clone())
            .map_err(|e| {
                Error::integrity(format!(
                    "the configuration of container {name} cannot be used: {e}"
                ))
            })?;
        let n = name.to_string();
        self.call(&format!("creating container {name}"), |d| async move {
            d.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&n).build()),
                body,
            )
            .await
        })?;
        Ok(())
    }

    fn connect_network(&self, container: &str, network: &str, aliases: &[String]) -> Result<()> {
        let req = bollard::models::NetworkConnectRequest {
            container: Some(container.to_string()),
            endpoint_config: Some(bollard::models::EndpointSettings {
                aliases: Some(aliases.to_vec()),
                ..Default::default()
            }),
        };
        let n = network.to_string();
        self.call(
            &format!("connecting {container} to network {network}"),
            |d| async move { d.connect_network(&n, req).await },
        )
    }

    fn start_container(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.call(&format!("starting container {name}"), |d| async move {
            d.start_container(&n, None::<bollard::query_parameters::StartContainerOptions>)
                .await
        })
    }

    fn pause_container(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.call(&format!("pausing container {name}"), |d| async move {
            d.pause_container(&n).await
        })
    }

    fn stop_container(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.call(&format!("stopping container {name}"), |d| async move {
            d.stop_container(&n, None::<bollard::query_parameters::StopContainerOptions>)
                .await
        })
    }

    fn remove_container(&self, name: &str, anonymous_volumes: bool) -> Result<()> {
        let n = name.to_string();
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(anonymous_volumes)
            .build();
        self.call(&format!("removing container {name}"), |d| async move {
            d.remove_container(&n, Some(opts)).await
        })
    }

    fn wait_container(&self, name: &str) -> Result<i64> {
        self.block_on(async {
            use futures::StreamExt;
            let mut s = self.docker.wait_container(
                name,
                None::<bollard::query_parameters::WaitContainerOptions>,
            );
            match s.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                // The engine reports a non-zero exit as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(self.error(&format!("waiting for container {name}"), e)),
                None => Ok(0),
            }
        })
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        let tail = lines.to_string();
        let got = self.block_on(async {
            use futures::StreamExt;
            let opts = bollard::query_parameters::LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .tail(&tail)
                .build();
            let mut s = self.docker.logs(name, Some(opts));
            let mut out = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                out.extend_from_slice(&chunk.into_bytes());
            }
            out
        });
        String::from_utf8_lossy(&got).trim_end().to_string()
    }

    fn exec_argv(
        &self,
        container: &str,
        argv: Vec<String>,
        env: Vec<String>,
        user: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<(Option<i64>, Vec<Output>)> {
        let (c, user) = (container.to_string(), user.map(str::to_string));
        let program = argv.first().cloned().unwrap_or_default();
        self.call(
            &format!("running {program} in container {container}"),
            |d| async move {
                use bollard::container::LogOutput;
                use futures::StreamExt;
                let exec = d
                    .create_exec(
                        &c,
                        bollard::models::ExecConfig {
                            attach_stdout: Some(true),
                            attach_stderr: Some(true),
                            user,
                            env: (!env.is_empty()).then_some(env),
                            cmd: Some(argv),
                            ..Default::default()
                        },
                    )
                    .await?;
                let mut output = Vec::new();
                let run = async {
                    if let bollard::exec::StartExecResults::Attached { output: mut s, .. } =
                        d.start_exec(&exec.id, None).await?
                    {
                        while let Some(chunk) = s.next().await {
                            output.push(match chunk? {
                                LogOutput::StdErr { message } => (true, message.to_vec()),
                                other => (false, other.into_bytes().to_vec()),
                            });
                        }
                    }
                    Ok::<_, bollard::errors::Error>(())
                };
                match tokio::time::timeout(timeout, run).await {
                    Err(_) => return Ok((None, output)),
                    Ok(r) => r?,
                }
                let inspect = d.inspect_exec(&exec.id).await?;
                Ok((Some(inspect.exit_code.unwrap_or(-1)), output))
            },
        )
    }

    fn upload(&self, container: &str, dest: &str, archive: std::fs::File) -> Result<()> {
        let body = bollard::body_try_stream(super::file_stream(archive));
        self.call(
            &format!("writing {dest} of container {container}"),
            |d| async move {
                d.upload_to_container(
                    container,
                    Some(UploadToContainerOptionsBuilder::new().path(dest).build()),
                    body,
                )
                .await
            },
        )
    }

    fn archive_head(&self, container: &str, path: &str, limit: usize) -> Result<Vec<u8>> {
        self.block_on(async {
            use futures::StreamExt;
            let opts = DownloadFromContainerOptionsBuilder::new()
                .path(path)
                .build();
            let mut s = self.docker.download_from_container(container, Some(opts));
            let mut head = Vec::new();
            while head.len() < limit {
                match s.next().await {
                    Some(chunk) => head.extend_from_slice(&chunk.map_err(|e| {
                        self.error(&format!("reading {path} of container {container}"), e)
                    })?),
                    None => break,
                }
            }
            Ok(head)
        })
    }

    fn volume_mountpoint(&self, name: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(self.inspect_volume(name)?.mountpoint))
    }

    fn create_volume(
        &self,
        name: &str,
        driver: &str,
        options: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let body = bollard::models::VolumeCreateOptions {
            name: Some(name.to_string()),
            driver: Some(driver.to_string()),
            driver_opts: Some(options.clone().into_iter().collect()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.call(&format!("creating volume {name}"), |d| async move {
            d.create_volume(body).await
        })?;
        Ok(())
    }

    fn remove_volume(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.call(&format!("removing volume {name}"), |d| async move {
            d.remove_volume(&n, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
        })
    }

    fn network_exists(&self, name: &str) -> Result<bool> {
        let n = name.to_string();
        let found = self.call(&format!("inspecting network {name}"), |d| async move {
            d.inspect_network(&n, None::<bollard::query_parameters::InspectNetworkOptions>)
                .await
        });
        match found {
            Ok(_) => Ok(true),
            Err(e) if e.kind == crate::error::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_network(&self, name: &str, spec: &NetworkSpec) -> Result<()> {
        let body = bollard::models::NetworkCreateRequest {
            name: name.to_string(),
            driver: Some(spec.driver.clone()),
            internal: Some(spec.internal),
            attachable: Some(spec.attachable),
            labels: Some(spec.labels.clone().into_iter().collect()),
            options: Some(spec.options.clone().into_iter().collect()),
            ..Default::default()
        };
        self.call(&format!("creating network {name}"), |d| async move {
            d.create_network(body).await
        })?;
        Ok(())
    }

    fn remove_network(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.call(&format!("removing network {name}"), |d| async move {
            d.remove_network(&n).await
        })
    }

    fn image(&self, reference: &str) -> Result<ImageFacts> {
        let r = reference.to_string();
        let img = self.call(&format!("inspecting image {reference}"), |d| async move {
            d.inspect_image(&r).await
        })?;
        Ok(ImageFacts {
            id: img.id.unwrap_or_default(),
            architecture: img.architecture.unwrap_or_default(),
            config: serde_json::to_value(&img.config).unwrap_or(Value::Null),
        })
    }

    fn load_image(&self, archive: &Path, image: &str) -> Result<()> {
        use crate::error::IoContext;
        let file = std::fs::File::open(archive).ctx(|| format!("reading {}", archive.display()))?;
        let body = bollard::body_try_stream(super::file_stream(file));
        self.block_on(async {
            use futures::StreamExt;
            let opts = ImportImageOptionsBuilder::new().quiet(true).build();
            let mut s = self.docker.import_image(opts, body, None);
            while let Some(item) = s.next().await {
                let item = item.map_err(|e| self.error(&format!("loading image {image}"), e))?;
                if let Some(err) = item.error {
                    return Err(Error::other(format!(
                        "loading image {image} into the Docker engine at {}: {err}",
                        self.endpoint.host
                    )));
                }
            }
            Ok(())
        })
    }

    fn remove_image(&self, reference: &str) -> Result<()> {
        let r = reference.to_string();
        self.call(&format!("removing image {reference}"), |d| async move {
            d.remove_image(
                &r,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        })?;
        Ok(())
    }
}

/// A container as freezer needs to know it, from the engine's inspection of it.
fn facts_of(info: bollard::models::ContainerInspectResponse) -> ContainerFacts {
    let state = info.state.unwrap_or_default();
    let config = info.config.unwrap_or_default();
    let last_check = (state.health.as_ref())
        .and_then(|h| h.log.as_ref()?.last()?.output.clone())
        .map(|o| o.trim().to_string());
    ContainerFacts {
        running: state.running == Some(true),
        status: state.status.map(|s| s.to_string()).unwrap_or_default(),
        exit_code: state.exit_code.unwrap_or(0),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        last_check,
        hostname: config.hostname.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        mounts: (info.mounts.unwrap_or_default().into_iter())
            .filter_map(|m| Some((m.destination?, m.source?)))
            .collect(),
        upper_dir: info
            .graph_driver
            .filter(|g| g.name == "overlay2")
            .and_then(|g| g.data.get("UpperDir").cloned()),
        addresses: (info.network_settings.and_then(|n| n.networks))
            .into_iter()
            .flatten()
            .filter_map(|(_, e)| e.ip_address.filter(|a| !a.is_empty()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Engine API inspection, trimmed to what freezer reads, as Docker 26 answers it.
    fn inspected(
        state: serde_json::Value,
        driver: &str,
    ) -> bollard::models::ContainerInspectResponse {
        serde_json::from_value(serde_json::json!({
            "Id": "9f2c", "Name": "/shop-web-1",
            "State": state,
            "Config": {"Hostname": "9f2c0e1b", "Labels": {"com.docker.compose.service": "web"}},
            "Mounts": [
                {"Type": "volume", "Name": "shop_www", "Source": "/var/lib/docker/volumes/shop_www/_data",
                 "Destination": "/var/www/uploads", "RW": true},
                {"Type": "bind", "Source": "/srv/shop/php.ini", "Destination": "/usr/local/etc/php/php.ini", "RW": false}
            ],
            "GraphDriver": {"Name": driver, "Data": {"UpperDir": "/var/lib/docker/overlay2/abc/diff"}},
            "NetworkSettings": {"Networks": {
                "shop_default": {"IPAddress": "172.20.0.3"},
                "shop_back": {"IPAddress": ""}
            }}
        }))
        .unwrap()
    }

    #[test]
    fn a_running_healthy_container_is_read_with_its_mounts_layer_and_address() {
        let f = facts_of(inspected(
            serde_json::json!({"Status": "running", "Running": true, "ExitCode": 0,
                "Health": {"Status": "healthy", "Log": [{"ExitCode": 0, "Output": "ok\n"}]}}),
            "overlay2",
        ));
        assert!(f.running);
        assert_eq!(f.status, "running");
        assert_eq!(f.health.as_deref(), Some("healthy"));
        assert_eq!(f.last_check.as_deref(), Some("ok"));
        assert_eq!(f.hostname, "9f2c0e1b");
        assert_eq!(f.labels["com.docker.compose.service"], "web");
        assert_eq!(f.mounts[0].0, "/var/www/uploads");
        assert_eq!(f.mounts[1].1, "/srv/shop/php.ini");
        assert_eq!(
            f.upper_dir.as_deref(),
            Some("/var/lib/docker/overlay2/abc/diff")
        );
        assert_eq!(f.addresses, ["172.20.0.3"]);
    }

    #[test]
    fn an_exited_container_without_a_check_has_no_health_and_its_code() {
        let f = facts_of(inspected(
            serde_json::json!({"Status": "exited", "Running": false, "ExitCode": 137,
                "Health": {"Status": "none"}}),
            "overlay2",
        ));
        assert!(!f.running);
        assert_eq!((f.status.as_str(), f.exit_code), ("exited", 137));
        assert_eq!(f.health, None);
        assert_eq!(f.last_check, None);
    }

    #[test]
    fn a_writable_layer_is_found_only_on_overlay2() {
        let state = serde_json::json!({"Status": "running", "Running": true});
        assert_eq!(facts_of(inspected(state, "vfs")).upper_dir, None);
    }
}
