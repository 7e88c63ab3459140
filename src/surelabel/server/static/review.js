// Keyboard shortcuts for the review pages. Buttons carry data-key; the note box takes
// Ctrl+Enter to send "needs clarification".
document.addEventListener("keydown", function (event) {
  var target = event.target;
  var typing = target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT");
  if (typing) {
    if (target.id === "note" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      var clarify = document.querySelector('button[data-key="c"]');
      if (clarify) { clarify.click(); }
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) { return; }
  if (event.key === "c") {
    var note = document.getElementById("note");
    if (note) { event.preventDefault(); note.focus(); }
    return;
  }
  if (event.key === "Enter") {
    var start = document.getElementById("start");
    if (start) { event.preventDefault(); start.click(); }
    return;
  }
  var button = document.querySelector('button[data-key="' + CSS.escape(event.key) + '"]');
  if (button) {
    event.preventDefault();
    button.click();
  }
});
// "u" takes back the reviewer's last answer (the undo form on the queue and item pages).
document.addEventListener("keydown", function (event) {
  var target = event.target;
  if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) { return; }
  if (event.ctrlKey || event.metaKey || event.altKey || event.key !== "u") { return; }
  var undo = document.querySelector("#undo button");
  if (undo) { event.preventDefault(); undo.click(); }
});
