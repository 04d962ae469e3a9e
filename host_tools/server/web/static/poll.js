// Polls the payment's status until it is final and updates the page (no library).
(function () {
  var box = document.getElementById("payment");
  if (!box || box.dataset.final === "yes") return;
  var url = box.dataset.status;
  function show(s) {
    var st = document.getElementById("pay-state");
    // the offline code is drawn by the server: load the page again to show it
    if (s.state === "token" && st.dataset.state !== "token") { location.reload(); return; }
    var code = document.getElementById("token-box");
    if (code && s.state !== "token") code.parentNode.removeChild(code);
    st.textContent = s.label;
    st.className = "state state-" + s.state;
    st.dataset.state = s.state;
    document.getElementById("pay-text").textContent = s.text;
    var ol = document.getElementById("steps");
    ol.innerHTML = "";
    s.steps.forEach(function (step) {
      var li = document.createElement("li");
      li.textContent = step[0];
      li.className = step[1] ? "done" : "todo";
      ol.appendChild(li);
    });
    document.title = s.label + " - washpay";
    box.dataset.final = s.final ? "yes" : "no";
  }
  function poll() {
    fetch(url, {cache: "no-store"}).then(function (r) { return r.json(); })
      .then(function (s) { show(s); if (!s.final) setTimeout(poll, 700); })
      .catch(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 300);
})();
