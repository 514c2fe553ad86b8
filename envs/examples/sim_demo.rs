//! Renders every camera after reset and at the end of one scripted episode per task, writing PNGs, and
//! prints each expert's trajectory summary. `cargo run -p toprl-envs --example sim_demo -- OUT_DIR [SEED]`.

use toprl_envs::sim::{ActionSource, RolloutOptions, ScriptedExpert, SimConfig, So101Env, Task, rollout};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "sim_demo".into()));
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    std::fs::create_dir_all(&out)?;
    let only: Option<Task> = std::env::var("TASK").ok().and_then(|t| t.parse().ok());
    for task in Task::ALL.into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        let cfg = SimConfig {
            cameras: vec!["front".into(), "top".into(), "wrist".into()],
            ..SimConfig::for_task(task)
        };
        let mut env = So101Env::new(cfg)?;
        let mut expert = ScriptedExpert::new(&env, 0.0, seed);
        let r = rollout(
            &mut env,
            ActionSource::Expert(&mut expert),
            seed,
            RolloutOptions::default(),
        )?;
        let ep = &r.episode;
        println!(
            "{task}: success={} steps={} return={:.2} instruction={:?}",
            r.success, r.steps, r.total_reward, ep.instruction
        );
        let progress = ep.true_progress.as_deref().unwrap_or(&[]);
        let picks: Vec<String> = progress.iter().step_by(10).map(|p| format!("{p:.2}")).collect();
        println!("  progress every 10 steps: {}", picks.join(" "));
        for (key, frames) in &ep.cameras {
            let cam = key.rsplit('.').next().unwrap_or(key);
            for (tag, idx) in [
                ("first", 0),
                ("mid", frames.len() / 2),
                ("last", frames.len() - 1),
            ] {
                frames[idx].save(out.join(format!("{task}_{cam}_{tag}.png")))?;
            }
        }
    }
    Ok(())
}
