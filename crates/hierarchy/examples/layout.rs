//! Parses datastore paths given on the command line and shows what keepsake sees in them.
//!
//! ```sh
//! cargo run -p keepsake-hierarchy --example layout -- ns/prod/vm/100/2024-06-05T19:06:40Z ns/../etc
//! ```

use keepsake_hierarchy::{GroupPath, MANIFEST_BLOB_NAME, SnapshotPath};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inputs = if args.is_empty() {
        vec![
            "ns/prod/ns/site-a/vm/100/2024-06-05T19:06:40Z".to_owned(),
            "ct/200".to_owned(),
            "ns/../vm/100/2024-06-05T15:06:40Z".to_owned(),
        ]
    } else {
        args
    };
    let mut failed = false;
    for input in inputs {
        if let Ok(p) = input.parse::<SnapshotPath>() {
            println!("{input}");
            println!(
                "  namespace : {:?} (depth {})",
                p.ns.to_string(),
                p.ns.depth()
            );
            println!("  group     : {}", p.snapshot.group());
            println!(
                "  time      : {} (epoch {})",
                p.snapshot.time(),
                p.snapshot.time().epoch()
            );
            match p.snapshot.file_path(&p.ns, MANIFEST_BLOB_NAME) {
                Ok(manifest) => println!("  manifest  : {manifest}"),
                Err(e) => println!("  manifest  : {e}"),
            }
        } else {
            match input.parse::<GroupPath>() {
                Ok(g) => {
                    println!("{input}");
                    println!("  namespace : {:?}", g.ns.to_string());
                    println!(
                        "  group     : {} (type {}, id {})",
                        g.group,
                        g.group.ty(),
                        g.group.id()
                    );
                }
                Err(e) => {
                    failed = true;
                    println!("{input}\n  refused   : {e}");
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
