//! `thaw --table`: one table of a WordPress-like database, into a new database (nothing
//! else created) and back into the live one with `--replace` (nothing else touched).

use crate::common::*;
use crate::database::{db_url, drop_db, sql};

/// The shape of a WordPress database that matters here: posts with secondary indexes
/// and a trigger, post meta pointing at posts with a foreign key, options, a view.
const WP: &str = r#"
CREATE TABLE wp_posts (
  ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  post_author BIGINT UNSIGNED NOT NULL DEFAULT 0,
  post_date DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00',
  post_content LONGTEXT NOT NULL,
  post_title TEXT NOT NULL,
  post_status VARCHAR(20) NOT NULL DEFAULT 'publish',
  post_name VARCHAR(200) NOT NULL DEFAULT '',
  post_modified DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00',
  PRIMARY KEY (ID),
  KEY post_name (post_name(191)),
  KEY type_status_date (post_status, post_date, ID),
  KEY post_author (post_author)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE TABLE wp_postmeta (
  meta_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  post_id BIGINT UNSIGNED NOT NULL DEFAULT 0,
  meta_key VARCHAR(255) DEFAULT NULL,
  meta_value LONGTEXT,
  PRIMARY KEY (meta_id),
  KEY post_id (post_id),
  CONSTRAINT fk_post FOREIGN KEY (post_id) REFERENCES wp_posts (ID)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE TABLE wp_options (
  option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  option_name VARCHAR(191) NOT NULL DEFAULT '',
  option_value LONGTEXT NOT NULL,
  autoload VARCHAR(20) NOT NULL DEFAULT 'yes',
  PRIMARY KEY (option_id),
  UNIQUE KEY option_name (option_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
INSERT INTO wp_posts (post_author, post_date, post_content, post_title, post_name, post_modified)
  SELECT seq MOD 7, '2026-01-01' + INTERVAL seq MINUTE, REPEAT(CONCAT('Body of post ', seq, ' 🧊. '), 20),
         CONCAT('Post ', seq), CONCAT('post-', seq), '2026-06-01' FROM seq_1_to_3000;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value) SELECT seq, '_edit_lock', seq * 13 FROM seq_1_to_3000;
INSERT INTO wp_options (option_name, option_value) VALUES ('siteurl', 'https://shop.example'), ('blogname', 'Shop');
CREATE TRIGGER wp_posts_modified BEFORE UPDATE ON wp_posts FOR EACH ROW SET NEW.post_modified = NOW();
CREATE TRIGGER wp_options_bi BEFORE INSERT ON wp_options FOR EACH ROW SET NEW.autoload = COALESCE(NEW.autoload, 'yes');
CREATE VIEW published AS SELECT ID, post_title FROM wp_posts WHERE post_status = 'publish';
"#;

fn one(db: &str, q: &str) -> String {
    sql(Some(db), q).trim_end().to_string()
}

fn checksum(db: &str, table: &str) -> String {
    one(db, &format!("CHECKSUM TABLE `{table}` EXTENDED;"))
        .split('\t')
        .nth(1)
        .unwrap()
        .to_string()
}

fn objects(db: &str) -> String {
    sql(
        None,
        &format!(
            "SELECT 'table', TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' \
             UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}' \
             UNION ALL SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{db}' ORDER BY 1, 2;"
        ),
    )
}

#[test]
fn one_table_thaws_into_a_new_database_and_replaces_only_itself_in_the_live_one() {
    let src = unique("wp").replace('-', "_");
    drop_db(&src);
    sql(
        None,
        &format!("CREATE DATABASE `{src}` CHARACTER SET utf8mb4;"),
    );
    sql(Some(&src), WP);
    let posts_sum = checksum(&src, "wp_posts");
    let posts_create = one(&src, "SHOW CREATE TABLE wp_posts;");
    let meta_create = one(&src, "SHOW CREATE TABLE wp_postmeta;");
    let repo = TestRepo::local().init();
    let url = db_url(&src);
    assert_ok(&freezer(&[
        "freeze", "shop", "--repo", &repo.url, "--db", &url, "-q",
    ]));
    let thaw = |db: &str, extra: &[&str]| {
        let url = db_url(db);
        let mut args = vec!["thaw", "shop", "--repo", &repo.url, "--db", &url];
        args.extend(extra);
        freezer(&args)
    };

    // Into a new database: that table, its indexes and its trigger, and nothing else.
    let fresh = unique("wpone").replace('-', "_");
    let r = json(&thaw(&fresh, &["--table", "wp_posts", "--json"]));
    assert_eq!(r["databases"][0]["tables"], 1, "{r}");
    assert_eq!(
        objects(&fresh),
        "table\twp_posts\ntrigger\twp_posts_modified\n",
        "something else was created"
    );
    assert_eq!(checksum(&fresh, "wp_posts"), posts_sum);
    assert_eq!(one(&fresh, "SHOW CREATE TABLE wp_posts;"), posts_create);
    // DATABASE.TABLE names it too; a table the snapshot lacks is refused up front.
    let out = thaw(&fresh, &["--table", &format!("{src}.wp_nope")]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("wp_nope"), "{}", stderr(&out));

    // The live database: posts lost, options changed since the snapshot.
    sql(
        Some(&src),
        "SET foreign_key_checks=0; DELETE FROM wp_posts WHERE ID > 10; \
         INSERT INTO wp_options (option_name, option_value) VALUES ('added_later', 'keep me');",
    );
    let options_sum = checksum(&src, "wp_options");
    let meta_sum = checksum(&src, "wp_postmeta");
    let before = objects(&src);
    // Not without --replace: the table exists.
    let out = thaw(&src, &["--table", "wp_posts"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wp_posts") && stderr(&out).contains("--replace"),
        "{}",
        stderr(&out)
    );
    assert_ne!(
        checksum(&src, "wp_posts"),
        posts_sum,
        "the refused thaw changed the table"
    );

    let r = json(&thaw(
        &src,
        &["--table", &format!("{src}.wp_posts"), "--replace", "--json"],
    ));
    assert_eq!(r["databases"][0]["rows"], 3000, "{r}");
    assert_eq!(
        checksum(&src, "wp_posts"),
        posts_sum,
        "the table is not the snapshot's"
    );
    assert_eq!(
        checksum(&src, "wp_options"),
        options_sum,
        "another table was touched"
    );
    assert_eq!(
        checksum(&src, "wp_postmeta"),
        meta_sum,
        "another table was touched"
    );
    assert_eq!(objects(&src), before, "the database's objects changed");
    // The foreign key that points at the replaced table still does, and holds.
    assert_eq!(one(&src, "SHOW CREATE TABLE wp_postmeta;"), meta_create);
    assert_eq!(
        one(&src, "SELECT COUNT(*) FROM wp_postmeta m LEFT JOIN wp_posts p ON p.ID = m.post_id WHERE p.ID IS NULL;"),
        "0"
    );
    assert_eq!(one(&src, "SELECT COUNT(*) FROM published;"), "3000");
    drop_db(&fresh);
    drop_db(&src);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn a_table_thaw_killed_mid_load_is_noticed_and_completed_by_the_same_command() {
    let src = unique("wpk").replace('-', "_");
    drop_db(&src);
    sql(
        None,
        &format!("CREATE DATABASE `{src}` CHARACTER SET utf8mb4;"),
    );
    sql(Some(&src), WP);
    let posts_sum = checksum(&src, "wp_posts");
    let repo = TestRepo::local().init();
    let url = db_url(&src);
    // Small chunks: the table spans several, so a load can stop between them.
    assert_ok(&freezer(&[
        "freeze",
        "shop",
        "--repo",
        &repo.url,
        "--db",
        &url,
        "--chunk-size",
        "256K",
        "-q",
    ]));
    sql(
        Some(&src),
        "SET foreign_key_checks=0; DELETE FROM wp_posts WHERE ID > 10;",
    );
    let before = objects(&src);
    let args = [
        "thaw",
        "shop",
        "--repo",
        &repo.url,
        "--db",
        &url,
        "--table",
        "wp_posts",
        "--replace",
    ];

    // Killed (abort, as kill -9) after two chunks of the table went in.
    let out = freezer_env(&args, &[("FREEZER_FAULT_ABORT_AFTER_CHUNKS", "2")]);
    assert!(stderr(&out).contains("fault injection"), "{}", stderr(&out));
    let rows: u64 = one(&src, "SELECT COUNT(*) FROM wp_posts;").parse().unwrap();
    assert!(
        rows > 0 && rows < 3000,
        "{rows} rows: not a partly loaded table"
    );

    // Without --replace, the next run says what state the table is in.
    let out = freezer(&args[..args.len() - 1]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted") && stderr(&out).contains("partly loaded"),
        "{}",
        stderr(&out)
    );
    // The same command again: it says so too, and completes.
    let mut again: Vec<&str> = args.to_vec();
    again.push("--json");
    let r = json(&freezer(&again));
    assert!(
        r["databases"][0]["warnings"]
            .to_string()
            .contains("interrupted"),
        "{r}"
    );
    assert_eq!(checksum(&src, "wp_posts"), posts_sum);
    assert_eq!(
        objects(&src),
        before,
        "the marker or another object was left"
    );
    drop_db(&src);
}
