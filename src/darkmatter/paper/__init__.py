"""The paper: tables, macros and wording generated from the metrics, and the PDF build."""
