"""`python -m aos_bench.report`: write one sweep's report (aos_bench.report.main)."""

from aos_bench.report import main

if __name__ == "__main__":
    main()
