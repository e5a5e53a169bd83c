// changegate review inbox: live updates from the Server-Sent Events stream (no inline scripts: the
// page's Content-Security-Policy allows scripts from this origin only).
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-events");
  var live = document.getElementById("live");
  if (!url || !window.EventSource || !live) { return; }
  var proposal = body.getAttribute("data-proposal");
  var kinds = ["enqueued", "approval", "decided", "executed", "conflicted", "failed", "noop",
               "superseded", "expired", "re-proposed"];
  var fresh = 0;

  function say(text) {
    live.textContent = "";
    live.appendChild(document.createTextNode(text));
  }

  function refreshItem(event) {
    // Fetch this page again and swap in the parts that change; forms being filled are left alone.
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["item-state", "history"].forEach(function (id) {
          var now = document.getElementById(id), next = doc.getElementById(id);
          if (now && next) { now.replaceWith(next); }
        });
        if (event.type === "decided" || event.type === "expired" || event.type === "superseded") {
          var decide = document.querySelector(".decide");
          if (decide) { decide.remove(); }
        }
        say("Updated: " + event.type.replace("_", " ") + (event.actor ? " by " + event.actor : "") + ".");
      });
  }

  function updateRow(data, type) {
    var row = document.querySelector('tr[data-id="' + data.proposal_id + '"]');
    if (!row) {
      if (type === "enqueued") {
        fresh += 1;
        say(fresh + (fresh === 1 ? " new item" : " new items") + " arrived. ");
        var link = document.createElement("a");
        link.href = window.location.pathname + window.location.search;
        link.textContent = "Show them";
        live.appendChild(link);
      }
      return;
    }
    var cell = row.querySelector(".status .badge");
    if (cell) {
      cell.textContent = type === "executed" ? data.status.replace(/_/g, " ") + ", executed"
        : data.status.replace(/_/g, " ");
      cell.className = "badge badge-" + data.status;
    }
    row.classList.add("changed");
  }

  var source = new EventSource(url, { withCredentials: true });
  kinds.forEach(function (type) {
    source.addEventListener(type, function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (proposal) {
        if (data.proposal_id === proposal) { refreshItem({ type: type, actor: data.actor }); }
      } else {
        updateRow(data, type);
      }
    });
  });
}());
