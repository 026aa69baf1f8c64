// d3po label: the report page (numbers from /api/report, computed on the server).
"use strict";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

function fixed(value, digits) {
  return value === null || Number.isNaN(value) ? "-" : Number(value).toFixed(digits);
}

async function main() {
  const report = await (await fetch("/api/report")).json();
  const body = document.querySelector("#annotators tbody");
  for (const a of report.annotators) {
    const row = document.createElement("tr");
    [a.annotator, a.decisions, a.skips, a.undos, fixed(a.median_seconds_per_prompt, 1)].forEach((t) => cell(row, t));
    body.append(row);
  }
  const agreement = document.getElementById("agreement");
  for (const [name, block] of Object.entries(report.agreement)) {
    const p = document.createElement("p");
    p.textContent = `${name}: ${block.units_judged_by_several} units judged by several annotators; ` +
      `raw agreement ${fixed(block.pairwise_agreement, 3)}, Krippendorff's alpha (${block.level}) ${fixed(block.krippendorff_alpha, 3)}`;
    agreement.append(p);
    const table = document.createElement("table");
    for (const pair of block.pairs_of_annotators) {
      const row = document.createElement("tr");
      [pair.annotators.join(" / "), `${pair.shared} shared`, fixed(pair.agreement, 3)].forEach((t) => cell(row, t));
      table.append(row);
    }
    agreement.append(table);
  }
  const t = report.training;
  const dropped = Object.entries(t.dropped).map(([why, n]) => `${n} ${why}`).join(", ") || "none";
  document.getElementById("training").textContent =
    `${t.pairs} decided pairs for training (dropped: ${dropped}; ${t.conflicting_decided_by_majority} decided by majority over conflicting votes).`;
}

main();
