from deeplense_tf.cli import main

raise SystemExit(main())
