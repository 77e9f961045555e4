// The page works without this file; it only adds a confirmation to bulk decisions and greys out the
// value input of a field while "empty" is ticked.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
document.addEventListener("change", (event) => {
  const box = event.target;
  if (box.name === "null" && box.form) {
    const input = box.form.querySelector("input[name=value]");
    if (input) input.disabled = box.checked;
  }
});
