// A job's page, live: every few seconds ask /ui/jobs/{id}/live (JSON, same session)
// and update the page's facts and rounds table in place. Text only (textContent):
// nothing the coordinator answers is ever parsed as HTML. Without it the page
// still shows the job as it was when loaded.
"use strict";
(function () {
  const main = document.getElementById("job");
  if (!main) return;
  const url = main.dataset.live;
  const every = 1000 * (parseFloat(main.dataset.every) || 2);
  const facts = ["state", "consents", "participants", "round", "error"];

  function setText(id, value) {
    const el = document.getElementById(id);
    const text = value === null || value === undefined ? "" : String(value);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function setList(id, items) {
    const list = document.getElementById(id);
    if (!list || !Array.isArray(items)) return;
    list.replaceChildren(...items.map((item) => {
      const li = document.createElement("li");
      li.textContent = String(item);
      return li;
    }));
  }

  function setRounds(rounds) {
    const table = document.getElementById("rounds");
    if (!table || !Array.isArray(rounds)) return;
    const columns = Array.from(table.querySelectorAll("thead th")).map((th) => th.textContent);
    const body = table.tBodies[0];
    body.replaceChildren(...rounds.map((round) => {
      const tr = document.createElement("tr");
      for (const column of columns) {
        const td = document.createElement("td");
        td.textContent = String(round[column]);
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  async function tick() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) {
        const view = await answer.json();
        for (const id of facts) setText(id, view[id]);
        setRounds(view.rounds);
        setList("participant-list", view.participant_list);
        setList("refused", view.refused);
        main.dataset.updated = String(Date.now());
      } else if (answer.status === 401 || answer.status === 403) {
        setText("state", "(session ended: reload to sign in again)");
        return; // stop polling
      }
    } catch (err) {
      // the coordinator is unreachable for now: try again at the next tick
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
})();
