"""The project-wide base that every layer imports: its errors, typed settings and crash-safe files
(no torch, no other sparsearch package)."""
