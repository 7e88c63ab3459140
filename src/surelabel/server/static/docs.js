// Starts Swagger UI on /docs (a file, not an inline script: the page's CSP allows no inline
// script). The bundle itself is served from the installed swagger-ui-bundle package.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
