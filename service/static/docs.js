// Starts Swagger UI on this service's own OpenAPI document (no inline script,
// so the page runs under a Content-Security-Policy without 'unsafe-inline').
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The validator badge would fetch from validator.swagger.io: never.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
