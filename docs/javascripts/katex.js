// Renders the math of pymdownx.arithmatex (generic mode: \( ... \) and \[ ... \] inside
// elements of class "arithmatex") with the vendored KaTeX; no network access is needed.
// Runs on every page view, including mkdocs-material's instant navigation.
document$.subscribe(({ body }) => {
  body.querySelectorAll(".arithmatex").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false },
      ],
      throwOnError: false,
    });
  });
});
