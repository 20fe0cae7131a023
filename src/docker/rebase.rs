//! Moving a captured container onto another image (`thaw --image SERVICE=IMAGE`).
//!
//! The engine reports a container's configuration merged with its image's defaults: the
//! `Cmd` in `docker inspect` is the image's unless the container set one. To recreate the
//! container from a new image, every field that still equals the *old* image's default is
//! dropped, so the engine fills it from the new image when the container is created (the
//! same merge as `docker run`); fields the container set itself are kept. A field the
//! container set to exactly its image's default cannot be told apart, and follows the new
//! image.

use serde::Serialize;
use serde_json::{Map, Value};

/// The image defaults a container inherits (the image config's keys the engine merges).
pub const IMAGE_KEYS: [&str; 9] = [
    "Cmd",
    "Entrypoint",
    "Env",
    "ExposedPorts",
    "Healthcheck",
    "Labels",
    "StopSignal",
    "User",
    "Volumes",
];
const WORKDIR: &str = "WorkingDir";

/// The defaults of an image as the engine describes it (see [`image_defaults`]).
pub fn defaults_of(image: &bollard::models::ImageInspect) -> Value {
    image_defaults(&serde_json::to_value(&image.config).unwrap_or(Value::Null))
}

/// An image's defaults, as kept in a snapshot (`ContainerSpec::image_config`): only the
/// keys the engine merges into a container, canonical, without empty values.
pub fn image_defaults(config: &Value) -> Value {
    let mut out = Map::new();
    for key in IMAGE_KEYS.iter().chain([&WORKDIR]) {
        match &config[*key] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::Array(a) if a.is_empty() => {}
            Value::Object(o) if o.is_empty() => {}
            v => {
                out.insert(key.to_string(), super::canonical(v.clone()));
            }
        }
    }
    Value::Object(out)
}

/// One field of a container that differs after the move, for the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// `Cmd`, `Env APP_VERSION`, `Labels org.example`, `ExposedPorts 8080/tcp`, …
    pub field: String,
    pub from: String,
    pub to: String,
}

impl FieldChange {
    /// A change; the values of environment variables that look like secrets are hidden.
    pub fn new(field: String, from: String, to: String) -> FieldChange {
        let upper = field.to_ascii_uppercase();
        let secret = upper.starts_with("ENV ")
            && ["PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL"]
                .iter()
                .any(|w| upper.contains(w));
        let hide = |v: String| match secret && v != "(none)" {
            true => "(hidden)".to_string(),
            false => v,
        };
        FieldChange {
            field,
            from: hide(from),
            to: hide(to),
        }
    }
}

/// Rewrites `config` (a container's `Config` as captured) for `new_image`: what came from
/// `old` (the old image's defaults) is dropped so the engine takes `new`'s; returns what
/// changes, computed by applying the engine's merge to both sides.
pub fn rebase(config: &mut Value, old: &Value, new: &Value, new_image: &str) -> Vec<FieldChange> {
    let before = config.clone();
    let Some(c) = config.as_object_mut() else {
        return vec![];
    };
    // Entrypoint first: a container that set its own entrypoint runs its own Cmd too
    // (the engine never gives it the image's), so its Cmd stays whatever it is.
    let own_entrypoint = !same(c.get("Entrypoint"), old.get("Entrypoint"));
    for key in ["Entrypoint", "Healthcheck", "StopSignal", "User", WORKDIR] {
        if same(c.get(key), old.get(key)) {
            c.remove(key);
        }
    }
    if !own_entrypoint && same(c.get("Cmd"), old.get("Cmd")) {
        c.remove("Cmd");
    }
    // Lists and maps merge entry by entry: the image's entries are dropped where the
    // container still has them unchanged.
    if let Some(env) = c.get_mut("Env").and_then(Value::as_array_mut) {
        let old_env = strings(old.get("Env"));
        env.retain(|e| !e.as_str().is_some_and(|e| old_env.iter().any(|o| o == e)));
    }
    for key in ["Labels", "ExposedPorts", "Volumes"] {
        if let Some(map) = c.get_mut(key).and_then(Value::as_object_mut) {
            let o = old.get(key).and_then(Value::as_object);
            map.retain(|k, v| o.and_then(|o| o.get(k)) != Some(v));
        }
    }
    c.insert("Image".into(), Value::String(new_image.to_string()));
    changes(&merge(&before, &Value::Null), &merge(config, new))
}

/// Sets `KEY=VALUE` in a container's environment (`--env SERVICE:KEY=VALUE`).
pub fn set_env(config: &mut Value, key: &str, value: &str) {
    let entry = Value::String(format!("{key}={value}"));
    if !config["Env"].is_array() {
        config["Env"] = Value::Array(vec![]);
    }
    let env = config["Env"].as_array_mut().expect("made an array");
    let prefix = format!("{key}=");
    match env
        .iter_mut()
        .find(|e| e.as_str().is_some_and(|e| e.starts_with(&prefix)))
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    (empty(a) && empty(b)) || a == b
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The configuration the engine gives a container created with `user` from an image
/// with defaults `image` (moby's `merge` in daemon/commit.go).
pub fn merge(user: &Value, image: &Value) -> Value {
    let mut c = user.as_object().cloned().unwrap_or_default();
    let empty = |c: &Map<String, Value>, k: &str| same(c.get(k), None);
    for key in ["User", WORKDIR, "StopSignal", "Healthcheck"] {
        if empty(&c, key) {
            if let Some(v) = image.get(key) {
                c.insert(key.into(), v.clone());
            }
        }
    }
    if empty(&c, "Entrypoint") {
        if empty(&c, "Cmd") {
            if let Some(v) = image.get("Cmd") {
                c.insert("Cmd".into(), v.clone());
            }
        }
        if let Some(v) = image.get("Entrypoint") {
            c.insert("Entrypoint".into(), v.clone());
        }
    }
    let mut env = strings(c.get("Env"));
    for e in strings(image.get("Env")) {
        let key = e.split('=').next().unwrap_or("");
        if !env.iter().any(|u| u.split('=').next() == Some(key)) {
            env.push(e);
        }
    }
    c.insert("Env".into(), env.into_iter().map(Value::String).collect());
    for key in ["Labels", "ExposedPorts", "Volumes"] {
        let mut map = c
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in image
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        c.insert(key.into(), Value::Object(map));
    }
    Value::Object(c)
}

/// The fields of two effective configurations that differ.
fn changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut out = Vec::new();
    let mut push = |field: String, a: Option<&Value>, b: Option<&Value>| {
        if !same(a, b) {
            out.push(FieldChange {
                field,
                from: show(a),
                to: show(b),
            });
        }
    };
    push("Image".into(), before.get("Image"), after.get("Image"));
    for key in [
        "Entrypoint",
        "Cmd",
        "User",
        WORKDIR,
        "StopSignal",
        "Healthcheck",
    ] {
        push(key.into(), before.get(key), after.get(key));
    }
    let env = |v: &Value| -> Map<String, Value> {
        strings(v.get("Env"))
            .into_iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (e, Value::String(String::new())),
            })
            .collect()
    };
    let maps = [
        ("Env", env(before), env(after)),
        ("Labels", map(before, "Labels"), map(after, "Labels")),
        (
            "ExposedPorts",
            map(before, "ExposedPorts"),
            map(after, "ExposedPorts"),
        ),
        ("Volumes", map(before, "Volumes"), map(after, "Volumes")),
    ];
    for (name, a, b) in maps {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (x, y) = (a.get(k), b.get(k));
            if x != y {
                let field = format!("{name} {k}");
                out.push(FieldChange::new(
                    field,
                    x.map_or("(none)".into(), |v| show(Some(v))),
                    y.map_or("(none)".into(), |v| show(Some(v))),
                ));
            }
        }
    }
    out
}

fn map(v: &Value, key: &str) -> Map<String, Value> {
    v.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1() -> Value {
        json!({
            "Cmd": ["httpd", "-f"], "Env": ["PATH=/bin", "APP_VERSION=1"],
            "ExposedPorts": {"80/tcp": {}}, "Labels": {"org.version": "1"},
            "WorkingDir": "/app",
        })
    }

    fn v2() -> Value {
        json!({
            "Cmd": ["sh", "-c", "exec httpd -f"], "Env": ["PATH=/usr/bin:/bin", "APP_VERSION=2"],
            "ExposedPorts": {"80/tcp": {}, "443/tcp": {}}, "Labels": {"org.version": "2"},
            "WorkingDir": "/srv", "User": "www",
        })
    }

    #[test]
    fn what_came_from_the_old_image_follows_the_new_one_and_the_rest_stays() {
        // As `docker run -e SITE=shop --label site=shop v1` reports it.
        let mut c = merge(
            &json!({"Env": ["SITE=shop"], "Labels": {"site": "shop"}, "Image": "web:1"}),
            &v1(),
        );
        let changes = rebase(&mut c, &v1(), &v2(), "web:2");
        let created = merge(&c, &v2());
        assert_eq!(created["Cmd"], json!(["sh", "-c", "exec httpd -f"]));
        assert_eq!(created["WorkingDir"], "/srv");
        assert_eq!(created["User"], "www");
        let mut env = strings(created.get("Env"));
        env.sort();
        assert_eq!(env, ["APP_VERSION=2", "PATH=/usr/bin:/bin", "SITE=shop"]);
        assert_eq!(
            created["Labels"],
            json!({"org.version": "2", "site": "shop"})
        );
        assert_eq!(
            created["ExposedPorts"],
            json!({"80/tcp": {}, "443/tcp": {}})
        );
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "Image",
                "Cmd",
                "User",
                "WorkingDir",
                "Env APP_VERSION",
                "Env PATH",
                "Labels org.version",
                "ExposedPorts 443/tcp"
            ]
        );
    }

    #[test]
    fn what_the_container_set_itself_is_kept() {
        let mut c = merge(
            &json!({"Cmd": ["httpd", "-p", "8080"], "Env": ["APP_VERSION=9"], "WorkingDir": "/www",
                    "User": "1000"}),
            &v1(),
        );
        rebase(&mut c, &v1(), &v2(), "web:2");
        let created = merge(&c, &v2());
        assert_eq!(created["Cmd"], json!(["httpd", "-p", "8080"]));
        assert_eq!(created["WorkingDir"], "/www");
        assert_eq!(created["User"], "1000");
        assert!(strings(created.get("Env")).contains(&"APP_VERSION=9".to_string()));
    }

    #[test]
    fn an_own_entrypoint_keeps_its_command() {
        let old = json!({"Entrypoint": ["/init"], "Cmd": ["serve"]});
        let new = json!({"Entrypoint": ["/init2"], "Cmd": ["serve2"]});
        // `docker run --entrypoint /bin/sh old -c serve`
        let mut c = merge(
            &json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "serve"]}),
            &old,
        );
        rebase(&mut c, &old, &new, "new");
        let created = merge(&c, &new);
        assert_eq!(created["Entrypoint"], json!(["/bin/sh"]));
        assert_eq!(created["Cmd"], json!(["-c", "serve"]));
        // Only the command set: the new image's entrypoint runs it.
        let mut c = merge(&json!({"Cmd": ["worker"]}), &old);
        rebase(&mut c, &old, &new, "new");
        let created = merge(&c, &new);
        assert_eq!(created["Entrypoint"], json!(["/init2"]));
        assert_eq!(created["Cmd"], json!(["worker"]));
    }

    #[test]
    fn secret_values_are_not_shown() {
        let c = FieldChange::new("Env DB_PASSWORD".into(), "(none)".into(), "s3cret".into());
        assert_eq!((c.from.as_str(), c.to.as_str()), ("(none)", "(hidden)"));
        let c = FieldChange::new("Env APP_VERSION".into(), "1".into(), "2".into());
        assert_eq!(c.to, "2");
    }

    #[test]
    fn env_overrides_replace_or_add() {
        let mut c = json!({"Env": ["A=1", "B=2"]});
        set_env(&mut c, "B", "x=y");
        set_env(&mut c, "C", "");
        assert_eq!(c["Env"], json!(["A=1", "B=x=y", "C="]));
    }
}
