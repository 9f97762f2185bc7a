from tierfs.prefork import main

main()
