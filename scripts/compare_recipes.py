"""The paper's claim under two recipes: rows measured under both, side by side, from the report CSVs of each.

    python scripts/compare_recipes.py paper=results/table2.csv modern=results/table2_modern.csv
    python scripts/compare_recipes.py --datasets cifar10,intel augmented=results/table2.csv none=results/table2_noaug.csv

Prints markdown: per row, AOS − ROS and AOS − BASE with their sign-flip p-values and whether the paper's ordering
holds, under each recipe; then mean |ours − paper| per table and recipe over the rows measured under both
(`--datasets`: only these datasets' rows).
"""

import argparse

import pandas as pd

from aos_bench.registry import display

ROW = ["dataset", "mu", "rho"]


def rows(path: str) -> pd.DataFrame:
    """One line per measured row of a report CSV (written by python -m aos_bench.report)."""
    table = pd.read_csv(path)
    return table[table["mean"].notna()]


def paired(recipes: dict[str, pd.DataFrame], both: pd.DataFrame) -> str:
    """Markdown: the paired differences and orderings per row and recipe."""
    lines = ["| dataset | mu | rho | recipe | AOS − ROS | p | AOS − BASE | p | ours: best to worst | paper's order holds |", "|" + "---|" * 10]
    for key in both.itertuples(index=False):
        for recipe, table in recipes.items():
            row = table.merge(pd.DataFrame([key._asdict()]), on=ROW).iloc[0]
            holds = {True: "yes", False: "no"}.get(row["paper_order_holds"], "")
            lines.append(
                f"| {display(key.dataset)} | {key.mu:g} | {key.rho:g} | `{recipe}` | {row['aos_minus_ros']:+.2f} "
                f"(n={row['pairs_aos_ros']:.0f}) | {row['p_aos_vs_ros']:.3f} | {row['aos_minus_base']:+.2f} (n={row['pairs_aos_base']:.0f}) | "
                f"{row['p_aos_vs_base']:.3f} | {row['order']} | {holds} |"
            )
    return "\n".join(lines)


def agreement(recipes: dict[str, pd.DataFrame], both: pd.DataFrame) -> str:
    """Markdown: mean |ours − paper| and rows keeping the paper's ordering, per table and recipe."""
    lines = ["| table | recipe | cells | mean abs(ours − paper) | rows keeping the paper's order |", "|---|---|---|---|---|"]
    for recipe, table in recipes.items():
        shared = table.merge(both, on=ROW)
        for name, cells in shared.groupby("paper_table"):
            per_row = cells.groupby(ROW)["paper_order_holds"].first()
            lines.append(
                f"| {name} | `{recipe}` | {len(cells)} | {cells['diff'].abs().mean():.2f} | {int(per_row.sum())} of {len(per_row)} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Read NAME=CSV pairs and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", metavar="NAME=CSV", help="a recipe's name and its report CSV")
    parser.add_argument("--datasets", default=None, help="comma-separated: compare only these datasets' rows")
    args = parser.parse_args()
    recipes = {name: rows(path) for name, path in (arg.split("=", 1) for arg in args.tables)}
    if args.datasets:
        recipes = {name: table[table["dataset"].isin(args.datasets.split(","))] for name, table in recipes.items()}
    keys = [set(map(tuple, table[ROW].drop_duplicates().to_numpy())) for table in recipes.values()]
    both = pd.DataFrame(sorted(set.intersection(*keys)), columns=ROW)
    print("## AOS against ROS and BASE under each recipe\n")
    print(paired(recipes, both))
    print("\n## Agreement with the paper's values\n")
    print(agreement(recipes, both))


if __name__ == "__main__":
    main()
