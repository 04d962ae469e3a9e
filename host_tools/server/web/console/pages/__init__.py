"""The console's pages: every module here is imported by console.install() and registers
its routes with @operator_route (docs/console.md, "Adding a page")."""
