from d3po.cli import main

main()
