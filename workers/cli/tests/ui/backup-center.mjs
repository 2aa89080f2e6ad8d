// Drives the Backup center of a running `stowage serve` in Debian's Chromium, as a person
// would: sign in with the token, see the instances, back one up and watch the job finish,
// plan a restore (dry run) and read the plan, run it, see a failed backup's dead letter.
// Started by the Rust test workers/cli/tests/it/ui.rs, which starts the server and checks
// what this script reports. Exits non-zero with a message on the first thing that is wrong.
//
// Environment: STOWAGE_URL, STOWAGE_TOKEN, SCREENSHOTS (a folder), CHROMIUM (the browser),
// FAILING_INSTANCE (an instance whose backups fail permanently), JOB_TIMEOUT_MS.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const url = need("STOWAGE_URL");
const token = need("STOWAGE_TOKEN");
const shots = need("SCREENSHOTS");
const failing = need("FAILING_INSTANCE");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const jobTimeout = Number(process.env.JOB_TIMEOUT_MS || 600000);
// How long the page may take to show what the API says: generous, because CI runs this beside
// every other test on two cores.
const UI_WAIT = 120000;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (the Rust test ui.rs sets it)`);
  return v;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

mkdirSync(shots, { recursive: true });
const report = { steps: [] };
const step = (s) => {
  report.steps.push(s);
  console.log(`backup-center: ${s}`);
};

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container: Chromium's sandbox needs user namespaces it may not have.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_WAIT);
  // Any script error or refused resource (a CSP violation, a 404) fails the run.
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/401 \(Unauthorized\)/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });
  page.on("response", (r) => {
    // 401: the wrong token typed on purpose (and the first look before signing in).
    if (r.status() >= 400 && r.status() !== 401) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  const shot = async (name) => {
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  };

  // 1. Sign in: the server has a token, so the page asks for it.
  await page.goto(url);
  await page.locator("#login").waitFor({ state: "visible", timeout: UI_WAIT });
  check((await page.locator("#login-error").innerText()) === "", "the page says a token was refused before one was typed");
  await shot("01-sign-in");
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "refused" }).waitFor({ timeout: UI_WAIT });
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.locator("#tabs").waitFor({ state: "visible", timeout: UI_WAIT });
  check(!page.url().includes(token), `the token is in the page's address: ${page.url()}`);
  const stored = await page.evaluate(() => sessionStorage.getItem("stowage.token"));
  check(stored === token, "the token is not kept in sessionStorage");
  step("signed in with the token");

  // 2. The instances, with their protection state.
  const shop = page.locator('#instances tr[data-instance="shop"]');
  await shop.waitFor({ timeout: UI_WAIT });
  await page.locator(`#instances tr[data-instance="${failing}"]`).waitFor({ timeout: UI_WAIT });
  const before = await shop.innerText();
  check(/RPO breached/.test(before), `a new instance with no backup should breach its RPO: ${before}`);
  await page.locator("#fleet-summary", { hasText: "geo-replication lag" }).waitFor();
  await shot("02-instances");
  step(`saw the instances: ${(await page.locator("#instances tbody tr").count())} rows`);

  // 3. Back up now, and watch the job to the end on the Jobs tab.
  await shop.locator("button.backup").click();
  await page.waitForURL(/#jobs$/);
  // The new job's row, highlighted (not a row left from an earlier visit to the tab).
  const row = page.locator('#jobs tr.highlight[data-job^="backup-shop-"]');
  await row.waitFor({ timeout: UI_WAIT });
  const job = await row.getAttribute("data-job");
  check(job, "the new job's row names no job");
  const seen = new Set();
  const texts = new Set();
  let sawProgress = false;
  let sawCounts = false;
  let midShot = false;
  const deadline = Date.now() + jobTimeout;
  for (;;) {
    const r = page.locator(`#jobs tr[data-job="${job}"]`);
    const status = await r.locator(".job-status [data-status]").getAttribute("data-status");
    seen.add(status);
    if (status === "running") texts.add((await r.locator("td").nth(4).innerText()).replace(/\s+/g, " "));
    // Live progress: a bar in a stage that is still running (with counts once the stage has
    // flushed some to the job record, at most once a second; indeterminate before).
    // Read in one step: the page re-renders the row as it polls, and a bar counted in one
    // call may be gone by the next (a locator call on it would wait for it until timeout).
    const values = await r
      .locator('.stage:has([data-status="running"]) progress')
      .evaluateAll((nodes) => nodes.map((n) => n.getAttribute("value")));
    if (values.length > 0) {
      sawProgress = true;
      if (values.some((v) => v !== null)) sawCounts = true;
      if (!midShot) {
        await shot("03-backup-running");
        midShot = true;
      }
    }
    if (status === "succeeded") break;
    check(status !== "failed" && status !== "cancelled", `backup ${job} ${status}: ${await r.innerText()}`);
    check(Date.now() < deadline, `backup ${job} did not finish in ${jobTimeout} ms (seen: ${[...seen]})`);
    await page.waitForTimeout(250);
  }
  check(sawProgress, `no progress bar of a running stage was seen while backup ${job} ran (seen: ${[...seen]}; stages while running: ${[...texts].join(" | ")})`);
  const stages = await page
    .locator(`#jobs tr[data-job="${job}"] .stage`)
    .evaluateAll((nodes) => nodes.map((n) => n.getAttribute("data-stage")));
  await shot("04-backup-succeeded");
  report.backup = { job, seen: [...seen], stages, progress_bar_seen: sawProgress, counts_seen: sawCounts };
  step(`backup ${job} went ${[...seen].join(" -> ")}, stages ${stages.join(", ")}; progress counts seen: ${sawCounts}`);

  // The instance is protected now: a recovery point in every tier, RPO met.
  await page.click('#tabs a[data-tab="instances"]');
  await page.locator('#instances tr[data-instance="shop"] .rpo', { hasText: "within RPO" }).waitFor({ timeout: UI_WAIT });
  for (const tier of ["operational", "vault", "secondary"]) {
    await page.locator(`#instances tr[data-instance="shop"] td[data-tier="${tier}"] code`).waitFor({ timeout: UI_WAIT });
  }
  const rp = await page.locator('#instances tr[data-instance="shop"] td[data-tier="vault"] code').innerText();
  report.recovery_point = rp;
  await shot("05-instances-protected");
  step(`shop is within its RPO, recovery point ${rp} in every tier`);

  // 4. The recovery-point browser, and from it the restore wizard: the dry-run plan first.
  await page.locator('#instances tr[data-instance="shop"] button', { hasText: "Recovery points" }).click();
  const rpRow = page.locator(`#rps tr[data-rp="${rp}"]`);
  await rpRow.waitFor({ timeout: UI_WAIT });
  await page.locator(`#rps tr[data-rp="${rp}"] .tier.available`).first().waitFor();
  await shot("06-recovery-points");
  await rpRow.locator("button.restore").click();
  await page.waitForURL(/#restore$/);
  await page.locator("#restore-form").waitFor({ state: "visible" });
  await page
    .waitForFunction((id) => document.getElementById("r-rp").value === id, rp, { timeout: UI_WAIT })
    .catch(() => {
      throw new Error(`the wizard did not take the chosen recovery point ${rp}`);
    });
  check((await page.inputValue("#r-tier")) === "vault", "the wizard should restore from the vault tier by default");
  await page.fill("#r-namespaces", "shop");
  await page.fill("#r-mapping", "shop=shop-ui");
  await page.click("#plan-button");
  await page.locator("#plan").waitFor({ state: "visible", timeout: UI_WAIT });
  check(!(await page.locator("#restore-form").isVisible()), "the request form is still shown beside the plan");
  const summary = await page.locator("#plan-summary").innerText();
  const entries = await page
    .locator("#plan-entries tbody tr")
    .evaluateAll((rows) => rows.map((r) => [...r.cells].map((c) => c.innerText)));
  const restoreId = await page.locator("#plan-id").innerText();
  await shot("07-restore-plan");
  check(/Nothing was changed/.test(summary), `the plan's summary: ${summary}`);
  const claim = entries.find((e) => e[2] === "PersistentVolumeClaim shop-ui/data-db-0");
  check(claim, `the plan does not restore the database claim into shop-ui: ${JSON.stringify(entries)}`);
  check(claim[1] === "create" && claim[3].length > 0, `the claim should be created on a new disk: ${claim}`);
  report.plan = { restore_id: restoreId, summary, entries: entries.length };
  step(`read the dry-run plan of ${restoreId}: ${entries.length} objects; ${summary}`);

  // Run it, and follow it in the wizard.
  await page.click("#run-button");
  await page.locator("#restore-run").waitFor({ state: "visible", timeout: UI_WAIT });
  check((await page.locator("#run-id").innerText()) === restoreId, "the restore did not keep the plan's id");
  const done = Date.now() + jobTimeout;
  for (;;) {
    const status = await page.locator("#run-status [data-status]").getAttribute("data-status");
    if (status === "succeeded") break;
    check(status !== "failed" && status !== "cancelled", `restore ${restoreId} ${status}: ${await page.locator("#restore-run").innerText()}`);
    check(Date.now() < done, `restore ${restoreId} did not finish in ${jobTimeout} ms`);
    await page.waitForTimeout(250);
  }
  await shot("08-restore-succeeded");
  report.restore = restoreId;
  step(`restore ${restoreId} succeeded`);

  // 5. A backup that fails for good (its pre-hook names a container the pod lacks) is a dead
  // letter.
  await page.click('#tabs a[data-tab="instances"]');
  await page.locator(`#instances tr[data-instance="${failing}"] button.backup`).click();
  await page.waitForURL(/#jobs$/);
  const bad = page.locator(`#jobs tr.highlight[data-job^="backup-${failing}-"]`);
  await bad.waitFor({ timeout: UI_WAIT });
  const badJob = await bad.getAttribute("data-job");
  await page.locator(`#jobs tr[data-job="${badJob}"] .job-status [data-status="failed"]`).waitFor({ timeout: jobTimeout });
  const badText = await page.locator(`#jobs tr[data-job="${badJob}"]`).innerText();
  await shot("09-backup-failed");
  await page.locator("#dl-count", { hasText: /^[1-9]/ }).waitFor({ timeout: UI_WAIT });
  await page.click('#tabs a[data-tab="dead-letters"]');
  const letter = page.locator(`#dead-letters tr[data-job="${badJob}"]`);
  await letter.waitFor({ timeout: UI_WAIT });
  const letterText = await letter.innerText();
  await shot("10-dead-letters");
  check(/snapshot/.test(letterText), `the dead letter should be the snapshot stage's: ${letterText}`);
  report.dead_letter = { job: badJob, row: letterText, job_row: badText };
  step(`backup ${badJob} of ${failing} failed and is a dead letter: ${letterText.replace(/\s+/g, " ")}`);

  // The remaining tabs render: drills (RTO), the fleet (queue depth, geo-replication lag).
  await page.click('#tabs a[data-tab="drills"]');
  await page.locator("#drills tbody tr").first().waitFor();
  await shot("11-drills");
  await page.click('#tabs a[data-tab="fleet"]');
  await page.locator("#queues tbody tr").first().waitFor();
  const lag = await page.locator("#geo-lag").innerText();
  check(lag !== "…", "the fleet tab did not load the geo-replication lag");
  report.geo_lag = lag;
  await shot("12-fleet");
  step(`fleet: geo-replication lag ${lag}`);

  // A reload keeps the session (sessionStorage); forgetting the token asks for it again.
  await page.reload();
  await page.locator("#tabs").waitFor({ state: "visible", timeout: UI_WAIT });
  await page.click("#sign-out");
  await page.locator("#login").waitFor({ state: "visible" });
  check((await page.evaluate(() => sessionStorage.getItem("stowage.token"))) === null, "the token was not forgotten");
  step("a reload kept the session; Forget token asked for it again");

  check(problems.length === 0, `the page had errors:\n${problems.join("\n")}`);
} finally {
  await browser.close();
  writeFileSync(join(shots, "report.json"), JSON.stringify({ ...report, problems }, null, 2));
}
console.log(`backup-center: OK (${report.steps.length} steps; screenshots in ${shots})`);
