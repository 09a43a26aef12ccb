// The live inbox: new bulletins in your channels appear without reloading (server-sent events
// from this node, exchange/web/live.py). Without JavaScript the pages work as before. Words come
// from the page (data-text-*) and the event (news, kind_label, created_label), in the reader's language.
"use strict";
(function () {
  var table = document.querySelector("[data-live-channel]");
  var status = document.getElementById("live-status");
  if (!table || !status || !window.EventSource) { return; }
  var channel = table.getAttribute("data-live-channel");
  var unread = table.getAttribute("data-text-unread") || "Unread";
  var where = table.getAttribute("data-text-where") || " in {channel} from {author}: ";
  var source = new EventSource("/console/events?after=" + encodeURIComponent(table.getAttribute("data-live-after")));

  function cell(tag, text, cls) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  source.addEventListener("bulletin", function (e) {
    var b = JSON.parse(e.data);
    var href = "/console/bulletins/" + b.id;
    var tlp = "tlp tlp-" + b.tlp.toLowerCase().replace("+", "-");
    status.textContent = "";
    status.appendChild(cell("strong", b.news + " "));
    status.appendChild(cell("span", "TLP:" + b.tlp, tlp));
    status.appendChild(document.createTextNode(where.replace(/\{(channel|author)\}/g, function (_, name) {
      return name === "channel" ? b.channel : b.author_name;  // one pass: a name cannot add a placeholder
    })));
    var link = cell("a", b.title);
    link.href = href;
    link.dir = "auto";
    status.appendChild(link);
    status.hidden = false;
    if (b.channel !== channel) { return; }
    var row = document.createElement("tr");
    row.className = "unread live-new";
    var state = cell("td");
    state.appendChild(cell("span", unread, "badge unread-badge"));
    row.appendChild(state);
    var title = cell("th");
    title.scope = "row";
    var open = cell("a", b.title);
    open.href = href;
    open.dir = "auto";
    title.appendChild(open);
    row.appendChild(title);
    row.appendChild(cell("td", b.kind_label));
    var handling = cell("td");
    handling.appendChild(cell("span", "TLP:" + b.tlp, tlp));
    row.appendChild(handling);
    var from = cell("td");
    from.appendChild(cell("bdi", b.author_name));
    row.appendChild(from);
    var when = cell("td");
    var time = cell("time", b.created_label || b.created);
    time.setAttribute("datetime", b.created);
    when.appendChild(time);
    row.appendChild(when);
    var body = table.querySelector("tbody");
    body.insertBefore(row, body.firstChild);
    table.hidden = false;
    var empty = document.getElementById("inbox-empty");
    if (empty) { empty.hidden = true; }
  });
})();
